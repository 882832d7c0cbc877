"""What a label store holds: the vocabulary of its events (actions, choices, ratings, strengths), `StoreConfig`,
its five tables, and the row-level helpers every part of the store shares: an annotator's name as stored, a row
checked against its table's limits, an item read back from its row, the columns a newer rlhflab added. What each
table is for is in the package's docstring (`rlhflab.labeling.store`)."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from sqlalchemy import (JSON, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        inspect)
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn

from ..records import Item

__all__ = ["CHOICES", "RATINGS", "STRENGTHS", "BULK_ROWS", "SCHEMA_LOCK", "StoreConfig", "metadata", "events_table",
           "leases_table", "in_force_table", "coverage_table", "annotator_name"]

ACTIONS = ("label", "skip", "flag_prompt", "undo", "decide")
# A decision is not an annotator's answer: it never takes the place of the reviewer's own label on the item
# and never moves anyone's queue; exports read it under the "adjudicated" policy.
VERDICTS = ("label", "decide")  # the actions that carry a choice or a ranking
ANSWERS = ("label", "skip", "flag_prompt")  # an annotator's own answer on an item: one is in force per pair
# What makes two events with one event_id the same event: a retry resends exactly these. The session and
# the time are where and when it was sent, so a retry from a restarted kernel may differ in them.
CONTENT = ("item_id", "annotator", "action", "choice", "strength", "ranking", "flags", "rationale", "shown_order",
           "target")
CHOICES = ("a", "b", "tie", "both_bad")  # of a pair; 'a' / 'b' name the responses as stored, never as shown
# A rating is a label too: thumbs up or down on an item with exactly one response. It decides no pair;
# KTO learns from it (rlhflab.labeling.exports.kto_rows). Undo and edit work on it as on any other label.
RATINGS = ("up", "down")
STRENGTHS = ("slightly", "clearly", "much")
BULK_ROWS = 1000  # a write of this many rows or more refreshes Postgres' planner statistics (`_after_bulk_write`)
SCHEMA_LOCK = int.from_bytes(b"rlhflab:", "big")  # Postgres advisory lock of a store's schema work; above 2**32,
# so no project's lock (a crc32) is the same key


@dataclass
class StoreConfig:
    overlap: int = 1  # annotators each item should get (m); gold items go to every annotator
    lease_seconds: float = 600.0  # an item handed out and not labeled within this returns to the queue
    synchronous: str = "FULL"  # SQLite fsync policy: FULL survives power loss, NORMAL only process crashes
    busy_timeout_s: float = 60.0  # how long a SQLite writer waits for another process's commit
    connect_timeout_s: float = 10.0  # Postgres: give up on an unreachable server after this long (then retry once)
    statement_timeout_s: float = 30.0  # Postgres: cancel a statement stuck this long (then retry once)
    # Calibration: items with a gold answer go to every annotator, mixed in among the real ones
    gold_rate: float | None = None  # share of each annotator's items that are gold; None: in queue order, as added
    qualification: int = 0  # gold items an annotator labels before any real item; 0: no qualification round
    qualification_accuracy: float = 0.8  # share of those they must get right to be served real items
    reviewers: tuple[str, ...] | None = None  # who may `decide`; None: anyone (a store of one person's labels)

    def __post_init__(self):
        if self.overlap < 1:
            raise ValueError(f"overlap must be at least 1 annotator per item, not {self.overlap}")
        if self.gold_rate is not None and not 0 <= self.gold_rate <= 1:
            raise ValueError(f"gold_rate is a share of the items served, between 0 and 1, not {self.gold_rate}")
        if self.qualification < 0 or not 0 <= self.qualification_accuracy <= 1:
            raise ValueError(f"qualification is a number of gold items (0 for none), not {self.qualification}, and "
                             f"qualification_accuracy a share between 0 and 1, not {self.qualification_accuracy}")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be 'FULL', 'NORMAL' or 'EXTRA', not {self.synchronous!r}")


metadata = MetaData()
items_table = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # insertion order = queue order
    Column("item_id", String(64), nullable=False),  # content hash unless the user names it
    Column("project", String(200), nullable=False),
    Column("prompt", Text, nullable=False),  # the text, or a conversation's turns as text (`Conversation.text`)
    Column("conversation", JSON),  # a conversation's chat messages; NULL for a text prompt
    Column("responses", JSON, nullable=False),  # list of K texts
    Column("sources", JSON, nullable=False),  # the policy (or dataset) that wrote each response
    Column("gold", JSON),  # calibration answer: a choice for pairs, ranks for rankings
    Column("meta", JSON),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project", "item_id"),
)
events_table = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # commit order
    Column("event_id", String(32), nullable=False, unique=True),  # chosen by the writer: retries cannot duplicate
    Column("project", String(200), nullable=False, index=True),
    Column("item_id", String(64), nullable=False),
    Column("annotator", String(200), nullable=False),
    Column("session", String(64)),  # which widget instance or script wrote it
    Column("action", String(16), nullable=False),  # label | skip | flag_prompt | undo | decide
    Column("choice", String(16)),  # a | b | tie | both_bad (pairs), up | down (a rating of one response)
    Column("strength", String(16)),  # slightly | clearly | much (when a or b won)
    Column("ranking", JSON),  # ranks per response, 1 = best, equal ranks = tie (rankings)
    Column("flags", JSON),  # {"a": ["harmful", ...], "b": [...]} per response
    Column("rationale", Text),
    Column("shown_order", JSON),  # response indices left to right as the annotator saw them
    Column("target", String(32)),  # the event an undo cancels
    Column("created_at", Float, nullable=False),
    Column("shown_at", Float),  # when the item went on screen (epoch s): created_at - shown_at is the time spent
    Column("guidelines", String(64)),  # the version of the guidelines the annotator was shown
    Index("events_by_annotator", "project", "annotator", "id"),  # undo, events(annotator)
    Index("events_by_pair", "project", "item_id", "annotator", "id"),  # refolding one pair after an undo
    Index("events_by_target", "target"),  # what undoes an event
)
leases_table = Table(
    "open_leases", metadata,  # current state, not a log: a row goes when its annotator answers the item
    Column("project", String(200), nullable=False),
    Column("item_id", String(64), nullable=False),
    Column("annotator", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
    UniqueConstraint("project", "item_id", "annotator"),  # also the index of "who holds this item"
    Index("open_leases_by_annotator", "project", "annotator", "expires_at"),
)
in_force_table = Table(
    "in_force", metadata,
    Column("project", String(200), nullable=False),
    Column("item_id", String(64), nullable=False),
    Column("annotator", String(200), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("action", String(16), nullable=False),  # label | skip | flag_prompt
    Column("event_row", Integer, nullable=False),  # events.id of that event: commit order, for `recent`
    UniqueConstraint("project", "item_id", "annotator"),
    Index("in_force_by_annotator", "project", "annotator", "event_row"),
)
coverage_table = Table(
    "coverage", metadata,
    Column("project", String(200), nullable=False),
    Column("item_id", String(64), nullable=False),
    Column("position", Integer, nullable=False),  # items.id: queue order
    Column("gold", Boolean, nullable=False),  # a calibration item: it goes to everyone
    Column("labels", Integer, nullable=False),  # annotators whose answer in force is a label
    Column("answers", Integer, nullable=False, server_default="0"),  # annotators with any answer in force
    UniqueConstraint("project", "item_id"),
    Index("coverage_queue", "project", "gold", "labels", "position"),  # the oldest open item is an index seek
    Index("coverage_untouched", "project", "answers"),  # the items nobody has answered are an index range
)


def annotator_name(name) -> str:
    """`name` as the store keeps it: Unicode NFC, trimmed, inner spaces collapsed, case folded, so that "Ada",
    "ada " and "ADA" (and "José" typed with a combining accent or without) are one person's labels, progress
    and accuracy; an empty name is refused."""
    folded = " ".join(unicodedata.normalize("NFC", name).split()).casefold() if isinstance(name, str) else ""
    if not folded:
        raise ValueError(f"every event needs an annotator name, not {name!r}; pass annotator='your-name' "
                         "(each person their own: labels, progress and accuracy are kept per annotator)")
    return folded


def _fits(table: Table, row: dict) -> dict:
    """Refuse what Postgres refuses, on SQLite too, so a store behaves alike on a laptop and on the team's server:
    text longer than its column's limit, and a NUL character anywhere (Postgres cannot store one in text)."""
    for column in table.columns:
        value = row.get(column.name)
        if value is None:
            continue
        limit = getattr(column.type, "length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            raise ValueError(f"{column.name} {value[:40]!r}... is {len(value)} characters, over the store's limit of "
                             f"{limit}; shorten it. Nothing was written")
        text = value if isinstance(value, str) else json.dumps(value)  # JSON writes NUL as \u0000
        if "\x00" in text or "\\u0000" in text:
            raise ValueError(f"{column.name} holds a NUL character (\\x00), which Postgres cannot store; remove it "
                             "(text.replace('\\x00', '')). Nothing was written")
    return row


def _chunks(values: list, size: int = 500):
    """Pieces of `values` small enough for one IN (...) list on every database."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _item_of(row) -> Item:
    return Item(prompt=row["conversation"] or row["prompt"], responses=tuple(row["responses"]),
                sources=tuple(row["sources"]),
                gold=row["gold"], meta=row["meta"] or {}, item_id=row["item_id"])


def _add_missing_columns(conn: Connection, table: Table) -> list[str]:
    """Add the columns of `table` that a store written by an older rlhflab lacks; returns their names. Each
    must be nullable or have a server default, since the table has rows."""
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in present]
    for column in missing:
        if not column.nullable and column.server_default is None:
            raise TypeError(f"{table.name}.{column.name} is NOT NULL without a server default, so it cannot be "
                            "added to a table that has rows")
        conn.exec_driver_sql(f"ALTER TABLE {table.name} "
                             f"ADD COLUMN {CreateColumn(column).compile(dialect=conn.dialect)}")
    return [column.name for column in missing]
