"""The records that flow into the lab: column checks, the `Item` type, file readers, dedup and imports.

Every stage accepts a pandas DataFrame, a `datasets.Dataset`, or a list of dicts. `as_rows` turns
any of them into a list of plain dicts with the columns a stage needs, renaming through an
optional `columns` mapping, and says exactly what is missing and how to fix it.

An `Item` is a prompt and K responses (K = 1 to rate, 2 for a pair), with the source of each; the
store keeps items and labels, and `rlhflab.exports` turns labels back into rows.

Imports (HH-RLHF, generic JSONL or CSV) are read and checked completely before anything is
written, so a bad file raises with the line and the fix, and the store is left as it was.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEMONSTRATION_COLUMNS = ("prompt", "response")
COMPARISON_COLUMNS = ("prompt", "chosen", "rejected")
# One rule for empty judged replies, at import and in every trainer that learns from judgements (reward,
# DPO, KTO, ILQL): kept, and counted where data comes in (`ImportReport.empty_replies`). A preferred empty
# reply is data (HH-RLHF has some), and its chat transcript is the prompt and EOS, which every trainer
# reads. An empty prompt, and an SFT demonstration that says nothing, are refused.
REPLIES = ("chosen", "rejected", "response", "completion")
# Reward-model margin by preference strength: Llama 2's "small" margins (Touvron et al. 2023,
# Table 27); no strength means plain Bradley-Terry (margin 0).
MARGINS = {"slightly": 1 / 3, "clearly": 2 / 3, "much": 1.0, None: 0.0}
MAX_CHARS = 100_000  # longest text an import accepts by default (a page of text is ~3,000 characters)
HH_ASSISTANT = "\n\nAssistant:"


def as_rows(data, required: Iterable[str], columns: Mapping[str, str] | None = None,
            what: str = "data", allow_empty: Iterable[str] = (), optional: Iterable[str] = ()) -> list[dict]:
    """Rows of `data` as dicts holding at least `required` keys, each a non-empty string.

    Args:
        data: a pandas DataFrame, a datasets.Dataset, or a list of dicts.
        required: the column names the stage needs.
        columns: maps a required name to the name it has in `data`, e.g. {'response': 'completion'}.
        what: how the error messages call this data.
        allow_empty: required columns that may hold empty text (an empty reply is real data in HH-RLHF).
        optional: columns copied as they are when present (None when absent), e.g. 'margin'.
    """
    columns = dict(columns or {})
    required, allow_empty = list(required), set(allow_empty)
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
            if not value.strip() and name not in allow_empty:
                raise ValueError(f"{what} row {index}: {name!r} is empty; drop that row or fill it in")
        out.append({**record, **{name: row.get(name) for name in optional}})
    return out


def letter(index: int) -> str:
    """The letter that names response `index` of an item in labels and flags: 0 -> 'a', 1 -> 'b', ..."""
    return "abcdefghijklmnopqrstuvwxyz"[index]


def _not_a_record(row, what: str):
    raise TypeError(f"{what} rows must be dicts with named columns, not {type(row).__name__}")


# ---------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """Something to label: a prompt and its responses (1 to rate up or down, 2 for a pair, K for a ranking)."""

    prompt: str
    responses: tuple[str, ...]
    sources: tuple[str, ...] = ()  # who wrote each response (a policy name, 'hh-rlhf', ...); '' when unknown
    gold: str | list | None = None  # calibration answer: a choice ('a', 'b', 'tie', 'both_bad') or ranks
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # free-form, kept with the item
    item_id: str = ""  # derived from the content when empty, so the same item is never stored twice

    def __post_init__(self):
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "sources", tuple(self.sources) or ("",) * len(self.responses))
        if not self.responses:
            raise ValueError("an item needs at least one response: 1 to rate, 2 or more to compare")
        if len(self.sources) != len(self.responses):
            raise ValueError(f"{len(self.sources)} sources for {len(self.responses)} responses; give one per response")
        if not self.item_id:
            digest = hashlib.sha256(json.dumps([self.prompt, *self.responses]).encode()).hexdigest()
            object.__setattr__(self, "item_id", digest[:32])


# ---------------------------------------------------------------------------------------------
# Import: files -> checked comparison rows -> (deduplicated) -> the store
# ---------------------------------------------------------------------------------------------

def read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file, gzipped or not; invalid UTF-8 names its line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                out.append((number, raw.decode("utf-8")))
            except UnicodeDecodeError as error:
                raise ValueError(f"{path.name} line {number} is not valid UTF-8 (byte {error.start}: "
                                 f"{raw[error.start:error.start + 4]!r}); re-save the file as UTF-8, e.g. "
                                 f"iconv -f latin1 -t utf-8") from None
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """Objects of a JSON-lines file (.jsonl or .jsonl.gz); blank lines are ignored."""
    rows = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{Path(path).name} line {number} is not JSON ({error.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{Path(path).name} line {number} is a JSON {type(row).__name__}, not an object; "
                             "each line must be one {\"column\": value, ...} record")
        rows.append(row)
    return rows


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file with a header line; every value stays text."""
    text = "".join(line for _, line in read_lines(path))
    return list(csv.DictReader(io.StringIO(text)))


def read_records(source) -> tuple[object, str]:
    """A file's records by its extension (.csv as CSV; .jsonl and .jsonl.gz as JSON lines), or in-memory data
    as it is; and what error messages call it (the file's name, or 'data')."""
    if not isinstance(source, (str, Path)):
        return source, "data"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no file {str(path)!r}; check the path (relative paths start at {os.getcwd()})")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".csv":
        return read_csv(path), path.name
    if path.suffix.lower() == ".jsonl" or suffixes == ".jsonl.gz":
        return read_jsonl(path), path.name
    raise ValueError(f"{path.name}: rlhflab reads .csv, .jsonl and .jsonl.gz files; convert it, or pass a pandas "
                     "DataFrame (pd.read_parquet, pd.read_excel, ...)")


def read_comparisons(source, columns: Mapping[str, str] | None = None, max_chars: int | None = MAX_CHARS,
                     allow_empty: Iterable[str] = REPLIES) -> list[dict]:
    """Checked prompt / chosen / rejected rows from a file (.jsonl, .jsonl.gz, .csv) or in-memory data.

    Args:
        source: a path, a pandas DataFrame, a datasets.Dataset or a list of dicts.
        columns: maps prompt / chosen / rejected to your column names, e.g. {'chosen': 'better'}.
        max_chars: longest text accepted; None accepts any length (the widgets scroll long text).
        allow_empty: columns that may be empty strings: the replies (see REPLIES); pass () to refuse those too.
    """
    source, what = read_records(source)
    rows = as_rows(source, COMPARISON_COLUMNS, columns, what=what, allow_empty=allow_empty)
    if max_chars is not None:
        for index, row in enumerate(rows):
            for name, value in row.items():
                if len(value) > max_chars:
                    raise ValueError(f"{what} row {index}: {name!r} is {len(value):,} characters, over "
                                     f"max_chars={max_chars:,}; shorten it, drop the row, or pass max_chars=None")
    return rows


def read_hh_rlhf(path: str | Path) -> list[dict]:
    """Anthropic HH-RLHF comparisons (Bai et al. 2022) as prompt / chosen / rejected rows.

    Each HH record holds two whole transcripts that share the conversation up to the last
    assistant turn. The prompt is that shared prefix, ending in "\\n\\nAssistant:"; chosen and
    rejected are the two final assistant replies (a few are empty, and are kept: an empty reply that
    was preferred is data).
    """
    rows = []
    # HH has no prompt column: read the chosen transcript as the prompt too, then cut it below.
    for index, record in enumerate(read_comparisons(path, columns={"prompt": "chosen"}, max_chars=None)):
        chosen, rejected = record["chosen"], record["rejected"]
        shared = os.path.commonprefix([chosen, rejected])
        cut = shared.rfind(HH_ASSISTANT)
        if cut < 0:
            raise ValueError(f"{Path(path).name} record {index}: chosen and rejected share no assistant turn; "
                             "is this an HH-RLHF file? Use read_comparisons for other formats")
        cut += len(HH_ASSISTANT)
        rows.append({"prompt": chosen[:cut], "chosen": chosen[cut:].strip(), "rejected": rejected[cut:].strip()})
    return rows


def normalized(text: str) -> str:
    """Text in Unicode NFKC with case and runs of whitespace folded: the key of the looser duplicate check."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class DedupReport:
    """What `dedup` kept and dropped, and why."""

    kept: int
    exact: list[int] = field(default_factory=list)  # input rows identical to an earlier row
    normalized: list[int] = field(default_factory=list)  # equal to an earlier row after case/whitespace folding

    def __str__(self) -> str:
        return (f"kept {self.kept}; dropped {len(self.exact)} exact duplicates (rows {self.exact[:10]}) and "
                f"{len(self.normalized)} case/whitespace duplicates (rows {self.normalized[:10]})")


def dedup(rows: list[dict], keys: Iterable[str] = COMPARISON_COLUMNS) -> tuple[list[dict], DedupReport]:
    """Rows without duplicates on `keys`: exact first, then after case and whitespace folding.

    keys=('prompt',) removes repeated prompts; the default removes repeated comparisons.
    """
    keys = list(keys)
    seen_exact, seen_loose = set(), set()
    kept, report = [], DedupReport(kept=0)
    for index, row in enumerate(rows):
        exact = tuple(row[k] for k in keys)
        loose = tuple(normalized(row[k]) for k in keys)
        if exact in seen_exact:
            report.exact.append(index)
        elif loose in seen_loose:
            report.normalized.append(index)
        else:
            kept.append(row)
        seen_exact.add(exact)
        seen_loose.add(loose)
    report.kept = len(kept)
    return kept, report


@dataclass
class ImportReport:
    """What `import_comparisons` stored."""

    read: int  # comparisons in the input
    dedup: DedupReport | None  # None when deduplication was off
    stored: int  # new labeled items written
    already_stored: int  # items the store held before (same content): left alone
    empty_replies: int = 0  # stored comparisons with an empty chosen or rejected reply (kept: see REPLIES)

    def __str__(self) -> str:
        dropped = f"; {self.dedup}" if self.dedup else ""
        empty = f" ({self.empty_replies} with an empty reply, kept)" if self.empty_replies else ""
        return f"read {self.read}{dropped}; stored {self.stored}{empty}, already stored {self.already_stored}"


def import_comparisons(store, source, columns: Mapping[str, str] | None = None, annotator: str = "imported",
                       source_name: str = "imported", remove_duplicates: bool = True,
                       max_chars: int | None = MAX_CHARS, allow_empty: Iterable[str] = REPLIES) -> ImportReport:
    """Put labeled comparisons into a store: each becomes an item (chosen as 'a') and a label by `annotator`.

    `source` is anything `read_comparisons` reads, or rows already read (e.g. `read_hh_rlhf(path)`).
    Everything is checked before anything is written; bad input raises and the store is unchanged.

    Examples:
        >>> import tempfile, os
        >>> from rlhflab.store import LabelStore
        >>> store = LabelStore(os.path.join(tempfile.mkdtemp(), "labels.db"))
        >>> rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}] * 2
        >>> str(import_comparisons(store, rows))
        'read 2; kept 1; dropped 1 exact duplicates (rows [1]) and 0 case/whitespace duplicates (rows []); stored 1, already stored 0'
    """
    rows = read_comparisons(source, columns, max_chars, allow_empty)
    report = None
    if remove_duplicates:
        rows, report = dedup(rows)
    items = [Item(r["prompt"], (r["chosen"], r["rejected"]), (source_name, source_name)) for r in rows]
    new = store.add_items(items, label={"annotator": annotator, "choice": "a", "session": "import"})  # one transaction
    return ImportReport(read=len(rows) + (len(report.exact) + len(report.normalized) if report else 0),
                        dedup=report, stored=len(new), already_stored=len(items) - len(new),
                        empty_replies=sum(not reply.strip() for item in new for reply in item.responses))


def import_hh_rlhf(store, path: str | Path, annotator: str = "hh-rlhf") -> ImportReport:
    """`read_hh_rlhf` then `import_comparisons`, keeping HH's few empty replies (as everywhere) and its long ones."""
    return import_comparisons(store, read_hh_rlhf(path), annotator=annotator, source_name="hh-rlhf", max_chars=None)
