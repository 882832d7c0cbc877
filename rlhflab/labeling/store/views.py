"""A label store's log, the reading half: the raw log (`events`, `event`), what is in force, folded from it
(`current`, `labels`, `decisions`), a `snapshot` of one moment for the exports, and the indexed lookups of the
derived tables (`in_force`, `recent`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..records import Item
from .schema import ANSWERS, _item_of, annotator_name, events_table, in_force_table, items_table

__all__ = ["ViewsMixin", "StoreSnapshot"]


class ViewsMixin:
    """The reading half of `LabelStore`: what the log holds and what is in force. It uses the store's `project`,
    `is_sqlite` and read transactions (`_read`)."""

    # -- the log --------------------------------------------------------------------------------------

    def event(self, event_id: str) -> dict | None:
        """One event of this project by its event_id (an indexed lookup), or None."""
        e = events_table.c
        with self._read() as conn:
            row = conn.execute(select(events_table).where(e.event_id == event_id, e.project == self.project)
                               ).mappings().first()
        return dict(row) if row is not None else None

    def events(self, annotator: str | None = None) -> list[dict]:
        """The raw log, oldest first."""
        with self._read() as conn:
            return self._events(conn, annotator=annotator)

    def _events(self, conn: Connection, annotator: str | None = None, item_id: str | None = None) -> list[dict]:
        query = select(events_table).where(events_table.c.project == self.project)
        if annotator is not None:
            query = query.where(events_table.c.annotator == annotator_name(annotator))
        if item_id is not None:
            query = query.where(events_table.c.item_id == item_id)
        return [dict(r) for r in conn.execute(query.order_by(events_table.c.id)).mappings()]

    # -- the current view -------------------------------------------------------------------------

    def current(self, events: list[dict] | None = None) -> dict[tuple[str, str], dict]:
        """(item_id, annotator) -> the event in force: the newest label/skip/flag not undone."""
        return _fold(self.events() if events is None else events)

    def labels(self) -> list[dict]:
        """The labels in force, one per (item, annotator), oldest first; skips and undone labels left out."""
        return _labels_in_force(self.current())

    def snapshot(self) -> StoreSnapshot:
        """The items and the whole log as one transaction saw them (a repeatable read on Postgres), with the
        read methods of the store. Exports read this, so a label written meanwhile never meets an item list
        that lacks its item, and labels and decisions come from one moment."""
        with self._read() as conn:
            if not self.is_sqlite:  # Postgres' default isolation gives each statement its own snapshot
                conn.execution_options(isolation_level="REPEATABLE READ")
            items = conn.execute(select(items_table).where(items_table.c.project == self.project)
                                 .order_by(items_table.c.id)).mappings()
            items = {r["item_id"]: _item_of(r) for r in items}
            return StoreSnapshot(items, self._events(conn))

    def decisions(self) -> dict[str, dict]:
        """item_id -> the decision in force on it (the newest 'decide' event not undone)."""
        return _decisions(self.events())

    def in_force(self, item_id: str, annotator: str) -> dict | None:
        """The annotator's event in force for `item_id` (label, skip or prompt flag), or None: one indexed
        lookup in the derived table, not a replay of the log."""
        f, annotator = in_force_table.c, annotator_name(annotator)
        with self._read() as conn:
            row = conn.execute(select(events_table).join(in_force_table, events_table.c.id == f.event_row)
                               .where(f.project == self.project, f.item_id == item_id,
                                      f.annotator == annotator)).mappings().first()
        return dict(row) if row is not None else None

    def recent(self, annotator: str, n: int = 10) -> list[dict]:
        """The annotator's `n` latest events in force, newest first, each with its item's prompt."""
        f, i, annotator = in_force_table.c, items_table.c, annotator_name(annotator)
        with self._read() as conn:
            rows = conn.execute(
                select(events_table, i.prompt)
                .join(in_force_table, events_table.c.id == f.event_row)
                .join(items_table, (i.project == f.project) & (i.item_id == f.item_id))
                .where(f.project == self.project, f.annotator == annotator)
                .order_by(f.event_row.desc()).limit(n)).mappings()
            return [dict(r) for r in rows]


@dataclass(frozen=True)
class StoreSnapshot:
    """A store's items and log read at one moment (`LabelStore.snapshot`), with its read methods."""

    _items: dict[str, Item]
    _events: list[dict]

    def items(self) -> dict[str, Item]:
        return self._items

    def events(self) -> list[dict]:
        return self._events

    def current(self) -> dict[tuple[str, str], dict]:
        return _fold(self._events)

    def labels(self) -> list[dict]:
        return _labels_in_force(self.current())

    def decisions(self) -> dict[str, dict]:
        return _decisions(self._events)


def _labels_in_force(current: dict[tuple[str, str], dict]) -> list[dict]:
    return sorted((e for e in current.values() if e["action"] == "label"), key=lambda e: e["id"])


def _decisions(events: list[dict]) -> dict[str, dict]:
    undone = {e["target"] for e in events if e["action"] == "undo"}
    return {e["item_id"]: e for e in events if e["action"] == "decide" and e["event_id"] not in undone}


def _fold(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Replay the log: an undo cancels its target; the newest surviving answer per (item, annotator) counts.
    Decisions are no one's answer (see `LabelStore.decide`)."""
    undone = {e["target"] for e in events if e["action"] == "undo"}
    state: dict[tuple[str, str], dict] = {}
    for e in events:
        if e["action"] in ANSWERS and e["event_id"] not in undone:
            state[(e["item_id"], e["annotator"])] = e
    return state
