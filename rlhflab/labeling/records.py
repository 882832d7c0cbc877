"""The records that flow into the lab: column checks, the `Item` type, file readers, dedup and imports.

Every stage accepts a pandas DataFrame, a `datasets.Dataset`, or a list of dicts. `as_rows` turns
any of them into a list of plain dicts with the columns a stage needs, renaming through an
optional `columns` mapping, and says exactly what is missing and how to fix it.

A prompt is text, or a `Conversation`: chat turns that end in a user turn (HH-RLHF's dialogues, TRL's
conversational rows). Every model applies its own chat template to either (`as_messages`).

An `Item` is a prompt and K responses (K = 1 to rate, 2 for a pair), with the source of each; the
store keeps items and labels, and `rlhflab.labeling.exports` turns labels back into rows.

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
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

__all__ = ["DEMONSTRATION_COLUMNS", "COMPARISON_COLUMNS", "REPLIES", "MARGINS", "Message", "Conversation",
           "Prompt", "as_prompt", "as_messages", "prompt_text", "as_rows", "letter", "Item", "read_records",
           "read_comparisons", "read_hh_rlhf", "normalized", "DedupReport", "dedup", "ImportReport",
           "import_comparisons", "import_hh_rlhf"]

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
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")  # HH-RLHF's turn markers in its flat transcripts
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------------------------------
# Prompts: text or a conversation
# ---------------------------------------------------------------------------------------------

class Message(NamedTuple):
    """One chat turn."""

    role: str  # system | user | assistant
    content: str


class Conversation(tuple):
    """A prompt given as chat turns, ending in the user turn a reply answers. A tuple of `Message`s, so it
    is hashable and compares by value, like a text prompt; `as_prompt` builds one from chat messages."""

    def messages(self) -> list[dict]:
        """The turns as the {'role', 'content'} dicts that chat templates and JSON files hold."""
        return [{"role": m.role, "content": m.content} for m in self]

    def text(self) -> str:
        """The turns as readable text, one paragraph each ("User: ..."): what a text-only reader shows."""
        return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in self)


Prompt = str | Conversation


def as_prompt(value, where: str = "prompt") -> Prompt:
    """A prompt from text, or from chat messages ({'role', 'content'} dicts, or `Message`s) that end in a user
    turn. A conversation of one user turn is that turn's text, so both spellings of a prompt are one prompt.
    `where` names the value in errors (e.g. "prompts.jsonl row 3: 'prompt'")."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where} is empty; drop that row or fill it in")
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where} must be text or a list of chat messages, not {type(value).__name__} "
                         f"({str(value)[:40]!r}); convert or drop that row")
    turns = []
    for number, message in enumerate(value):
        role, content = (message.get("role"), message.get("content")) if isinstance(message, Mapping) else (
            message if isinstance(message, Message) else (None, None))
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"{where} message {number} is {str(message)[:60]!r}; each chat message is "
                             f"{{'role': one of {ROLES}, 'content': text}}")
        turns.append(Message(role, content))
    if turns[-1].role != "user" or not turns[-1].content.strip():
        raise ValueError(f"{where} ends with {turns[-1].role!r} turn {turns[-1].content[:40]!r}; a prompt's last "
                         "message is the non-empty user turn that the reply answers")
    return turns[-1].content if len(turns) == 1 else Conversation(turns)


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages: text is one user turn. Every chat template is applied to this."""
    return prompt.messages() if isinstance(prompt, Conversation) else [{"role": "user", "content": prompt}]


def prompt_text(prompt: Prompt) -> str:
    """A prompt as text: itself, or a conversation's turns (`Conversation.text`)."""
    return prompt.text() if isinstance(prompt, Conversation) else prompt


def as_reply(value, where: str):
    """A reply as text; TRL's conversational rows give it as one assistant message, [{'role': 'assistant', ...}]."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], Mapping) \
            and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str):
        raise ValueError(f"{where} must be text, not {type(value).__name__} ({str(value)[:40]!r}); convert or drop "
                         "that row")
    return value


def as_rows(data, required: Iterable[str], columns: Mapping[str, str] | None = None,
            what: str = "data", allow_empty: Iterable[str] = (), optional: Iterable[str] = ()) -> list[dict]:
    """Rows of `data` as dicts holding at least `required` keys, each a non-empty string.

    Args:
        data: a pandas DataFrame, a datasets.Dataset, or a list of dicts.
        required: the column names the stage needs; 'prompt' may hold text or chat messages (`as_prompt`), the
            others text (or one assistant message, as TRL's conversational rows give a reply).
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
            where = f"{what} row {index}: {name!r}"
            if name == "prompt":
                record[name] = as_prompt(value, where)
                continue
            record[name] = value = as_reply(value, where)
            if not value.strip() and name not in allow_empty:
                raise ValueError(f"{where} is empty; drop that row or fill it in")
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

    prompt: Prompt  # text, or a Conversation (chat messages are turned into one)
    responses: tuple[str, ...]
    sources: tuple[str, ...] = ()  # who wrote each response (a policy name, 'hh-rlhf', ...); '' when unknown
    gold: str | list | None = None  # calibration answer: a choice ('a', 'b', 'tie', 'both_bad') or ranks
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # free-form, kept with the item
    item_id: str = ""  # derived from the content when empty, so the same item is never stored twice

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            object.__setattr__(self, "prompt", as_prompt(self.prompt, "the item's prompt"))
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
            raise ValueError(f"{Path(path).name} line {number} is not JSON ({error.msg}); "
                             "fix or remove that line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{Path(path).name} line {number} is a JSON {type(row).__name__}, not an object; "
                             "each line must be one {\"column\": value, ...} record")
        rows.append(row)
    return rows


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV file with a header line; every value stays text."""
    text = "".join(line for _, line in read_lines(path))
    return list(csv.DictReader(io.StringIO(text)))


def source_name(source) -> str:
    """What error messages call a source: a file's name, or 'data' for rows in memory."""
    return Path(source).name if isinstance(source, (str, Path)) else "data"


def read_records(source) -> tuple[object, str]:
    """A file's records by its extension (.csv as CSV; .jsonl and .jsonl.gz as JSON lines), or in-memory data
    as it is; and what error messages call it (`source_name`)."""
    if not isinstance(source, (str, Path)):
        return source, source_name(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no file {str(path)!r}; check the path (relative paths start at {os.getcwd()})")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".csv":
        return read_csv(path), source_name(path)
    if path.suffix.lower() == ".jsonl" or suffixes == ".jsonl.gz":
        return read_jsonl(path), source_name(path)
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
                if len(value := prompt_text(value)) > max_chars:
                    raise ValueError(f"{what} row {index}: {name!r} is {len(value):,} characters, over "
                                     f"max_chars={max_chars:,}; shorten it, drop the row, or pass max_chars=None")
    return rows


def read_hh_rlhf(source) -> list[dict]:
    """Anthropic HH-RLHF comparisons (Bai et al. 2022) as prompt / chosen / rejected rows, the prompt a
    `Conversation`, so that each model reads the dialogue in its own chat template.

    Each HH record holds two whole flat transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") that share the
    dialogue up to the last assistant turn. That shared dialogue is the prompt, split into its turns; chosen
    and rejected are the two final assistant replies. A few replies are empty, and are kept (see REPLIES);
    where the transcripts part earlier (35 of harmless-base's 2,312 test records), a reply holds the rest of
    its transcript, later turns included, as HH judged it.

    `source` is a file (.jsonl or .jsonl.gz, as HH ships) or HH's rows in memory, e.g. the hub's
    `datasets.load_dataset("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")`.
    """
    rows, what = [], source_name(source)  # read_comparisons reads the file, once
    # HH has no prompt column: read the chosen transcript as the prompt too, then cut it below.
    for index, record in enumerate(read_comparisons(source, columns={"prompt": "chosen"}, max_chars=None)):
        chosen, rejected = record["chosen"], record["rejected"]
        cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
        if cut < 0:
            raise ValueError(f"{what} record {index}: chosen and rejected share no assistant turn; "
                             "is this an HH-RLHF file? Use read_comparisons for other formats")
        rows.append({"prompt": hh_conversation(chosen[:cut], f"{what} record {index}"),
                     "chosen": chosen[cut + len(HH_ASSISTANT):].strip(),
                     "rejected": rejected[cut + len(HH_ASSISTANT):].strip()})
    return rows


def hh_conversation(transcript: str, where: str) -> Prompt:
    """HH-RLHF's flat "\\n\\nHuman: ... \\n\\nAssistant: ..." dialogue as chat turns."""
    pieces = HH_TURN.split(transcript)  # text before the first marker, then (speaker, text) pairs
    turns = ([{"role": "user", "content": pieces[0].strip()}] if pieces[0].strip() else []) + [
        {"role": HH_ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]
    return as_prompt(turns, f"{where}'s dialogue")


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
        loose = tuple(normalized(prompt_text(row[k])) for k in keys)
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
        >>> from rlhflab.labeling.store import LabelStore
        >>> store = LabelStore(os.path.join(tempfile.mkdtemp(), "labels.db"))
        >>> rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}] * 2
        >>> str(import_comparisons(store, rows))  # doctest: +NORMALIZE_WHITESPACE
        'read 2; kept 1; dropped 1 exact duplicates (rows [1]) and 0 case/whitespace duplicates (rows []); stored 1,
        already stored 0'
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
