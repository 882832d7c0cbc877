"""The records that flow through the lab, and their conversion from what users hand us.

Every stage accepts a pandas DataFrame, a `datasets.Dataset`, or a list of dicts. `as_rows` turns
any of them into a list of plain dicts with the columns a stage needs, renaming through an
optional `columns` mapping, and says exactly what is missing and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEMONSTRATION_COLUMNS = ("prompt", "response")


def as_rows(data, required: Iterable[str], columns: Mapping[str, str] | None = None,
            what: str = "data") -> list[dict]:
    """Rows of `data` as dicts holding at least `required` keys, each a non-empty string.

    Args:
        data: a pandas DataFrame, a datasets.Dataset, or a list of dicts.
        required: the column names the stage needs.
        columns: maps a required name to the name it has in `data`, e.g. {'response': 'completion'}.
        what: how the error messages call this data.
    """
    columns = dict(columns or {})
    required = list(required)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        found, rows = [str(c) for c in data.columns], data.to_dict("records")
    elif hasattr(data, "column_names") and hasattr(data, "to_list"):  # datasets.Dataset
        found, rows = list(data.column_names), data.to_list()
    elif isinstance(data, (list, tuple)):
        rows = [dict(r) if isinstance(r, Mapping) else _not_a_record(r, what) for r in data]
        found = sorted({k for r in rows for k in r})
    else:
        raise TypeError(f"{what} must be a pandas DataFrame, a datasets.Dataset or a list of dicts, "
                        f"not {type(data).__name__}")
    if not rows:
        raise ValueError(f"{what} is empty; pass at least one row with columns {required}")
    for name in required:
        source = columns.get(name, name)
        if source not in found:
            raise ValueError(f"column {source!r} is missing from {what}; found: {', '.join(found) or 'none'}; "
                             f"pass columns={{{name!r}: ...}} to name the column that holds it")
    out = []
    for index, row in enumerate(rows):
        record = {name: row.get(columns.get(name, name)) for name in required}
        for name, value in record.items():
            if not isinstance(value, str):
                raise ValueError(f"{what} row {index}: {name!r} must be text, not {type(value).__name__} "
                                 f"({str(value)[:40]!r}); convert or drop that row")
            if not value.strip():
                raise ValueError(f"{what} row {index}: {name!r} is empty; drop that row or fill it in")
        out.append(record)
    return out


def _not_a_record(row, what: str):
    raise TypeError(f"{what} rows must be dicts with named columns, not {type(row).__name__}")
