"""A label store's event log, the writing half: events appended (`record`, `record_many`, `skip`, `flag_prompt`,
`undo`, `decide`), each checked first (a stored item, a valid choice, ranking or rating, an undo of the annotator's
own event, a decision by a reviewer) and stored once however often it is retried; and the derived tables `in_force`
and `coverage` kept in step inside each write, or rebuilt from the log."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections import Counter

from sqlalchemy import Table, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.engine import Connection

from .schema import (ACTIONS, ANSWERS, CHOICES, CONTENT, RATINGS, STRENGTHS, VERDICTS, _chunks, _fits, annotator_name,
                     coverage_table, events_table, in_force_table, items_table, leases_table)
from .views import _fold

__all__ = ["EventLogMixin"]

UNDO = events_table.alias("undo")  # an event that cancels the one it targets


class EventLogMixin:
    """The writing half of `LabelStore`: events in, the derived tables kept in step. It uses the store's `project`,
    `config`, `is_sqlite` and `_responses`, its transactions (`_write`, `_retrying`) and statements (`_built`,
    `_insert`, `_upsert`, `_after_bulk_write`), and reads the log with `ViewsMixin._events`."""

    # -- events -----------------------------------------------------------------------------------

    def record(self, item_id: str, annotator: str, *, action: str = "label", choice: str | None = None,
               strength: str | None = None, ranking: list[int] | None = None, flags: dict | None = None,
               rationale: str | None = None, shown_order: list[int] | None = None, session: str | None = None,
               target: str | None = None, event_id: str | None = None, shown_at: float | None = None,
               guidelines: str | None = None) -> str:
        """Append one event and commit it; returns its event_id once it is durable.

        A label of a pair gives `choice` (and `strength` when 'a' or 'b' won; None means the person
        did not say how much better); a label of a ranking gives `ranking`; a rating of a one-response
        item gives `choice='up'` or `'down'`. Labeling an item again is an edit: the newest label counts.

        `event_id` makes a retry safe: the widget gives every shown item one id, so sending the same
        event again after a timeout returns that id and stores nothing twice. The same id with other
        content is refused, since it would mean two different answers claim one event.

        `shown_at` (epoch seconds) is when the item went on screen, so the log holds the time spent
        on each label; `guidelines` names the version of the guidelines the annotator was shown. Like
        the session, neither is part of what makes a retry the same event.
        """
        return self.record_many([dict(
            item_id=item_id, annotator=annotator, action=action, choice=choice, strength=strength, ranking=ranking,
            flags=flags, rationale=rationale, shown_order=shown_order, session=session, target=target,
            event_id=event_id, shown_at=shown_at, guidelines=guidelines)])[0]

    def record_many(self, events: list[dict]) -> list[str]:
        """Append many events (each the keyword arguments of `record`) in one transaction: all or none.

        Every event must name a stored item: an event about an unknown item could never be shown,
        assigned or exported, so it is refused here rather than found later by every export.
        """
        rows = self._event_rows(events)
        if not rows:
            return []

        def append():
            with self._write(serialise=False) as conn:
                self._append(conn, rows)

        self._retrying(append)
        return [r["event_id"] for r in rows]

    def skip(self, item_id: str, annotator: str, **kwargs) -> str:
        return self.record(item_id, annotator, action="skip", **kwargs)

    def flag_prompt(self, item_id: str, annotator: str, rationale: str | None = None, **kwargs) -> str:
        """Mark the prompt itself as bad (unanswerable, harmful, garbled); it leaves this annotator's queue."""
        return self.record(item_id, annotator, action="flag_prompt", rationale=rationale, **kwargs)

    def undo(self, annotator: str, event_id: str | None = None, session: str | None = None) -> dict | None:
        """Cancel `event_id`, or the annotator's latest event still in force; returns the cancelled event. One
        indexed lookup, however long the annotator's log."""
        annotator, e = annotator_name(annotator), events_table.c
        query = select(events_table).where(e.project == self.project, e.annotator == annotator, e.action != "undo",
                                           ~select(literal(1)).where(UNDO.c.target == e.event_id).exists())
        if event_id is not None:
            query = query.where(e.event_id == event_id)
        with self._read() as conn:
            target = conn.execute(query.order_by(e.id.desc()).limit(1)).mappings().first()
        if target is None:
            return None
        self.record(target["item_id"], annotator, action="undo", target=target["event_id"], session=session)
        return dict(target)

    def decide(self, item_id: str, reviewer: str, *, choice: str | None = None, strength: str | None = None,
               ranking: list[int] | None = None, rationale: str | None = None, **kwargs) -> str:
        """Record a reviewer's decision on an item (one the annotators disagree on, say): a choice or a
        ranking, as a label gives. The newest decision not undone counts, whoever made it; it never
        replaces the reviewer's own label, and `exports` use it under policy="adjudicated"."""
        return self.record(item_id, reviewer, action="decide", choice=choice, strength=strength, ranking=ranking,
                           rationale=rationale, **kwargs)

    # -- appending ----------------------------------------------------------------------------------

    def _event_rows(self, events: list[dict]) -> list[dict]:
        """Checked rows of the events table from `record`'s keyword arguments."""
        return [_fits(events_table, _checked_event(dict(
            event_id=e.get("event_id") or uuid.uuid4().hex, project=self.project, item_id=e["item_id"],
            annotator=annotator_name(e["annotator"]), session=e.get("session"), action=e.get("action", "label"),
            choice=e.get("choice"), strength=e.get("strength"), ranking=_as_json(e.get("ranking")),
            flags=_as_json(e.get("flags") or None), rationale=e.get("rationale") or None,
            shown_order=_as_json(e.get("shown_order")), target=e.get("target"), created_at=time.time(),
            shown_at=e.get("shown_at"), guidelines=e.get("guidelines"))))
            for e in events]

    def _append(self, conn: Connection, rows: list[dict], items_are_new: bool = False):
        """Append checked event rows in the caller's write transaction, with the derived tables kept in step.
        `items_are_new`: the events' items were stored in this same transaction (see `_keep_in_force`)."""
        self._check_items(conn, rows)
        self._check_undo_targets(conn, rows)
        self._check_reviewers(rows)
        new = _new_events(rows, {})  # the batch's own repeats
        # An event_id stored before (by this writer or another, committed first) is left out here and
        # compared below: a retry is stored once, the same id with other content is refused.
        ids = dict(conn.execute(self._built("append", lambda: self._insert(events_table).on_conflict_do_nothing(
            index_elements=["event_id"]).returning(events_table.c.event_id, events_table.c.id)), new).all())
        repeated = [e for e in new if e["event_id"] not in ids]
        if repeated:
            _new_events(repeated, self._stored_events(conn, [e["event_id"] for e in repeated]))
        self._keep_in_force(conn, [{**e, "id": ids[e["event_id"]]} for e in new if e["event_id"] in ids], items_are_new)
        self._after_bulk_write(conn, len(ids), events_table, in_force_table, coverage_table, leases_table)

    def _check_reviewers(self, rows: list[dict]):
        """Refuse a `decide` from anyone but the project's reviewers, where it names them. On SQLite this is the
        API's promise only: anyone who can write the file can write anything."""
        reviewers = self.config.reviewers
        deciding = {r["annotator"] for r in rows if r["action"] == "decide"}
        if reviewers is not None and deciding - {annotator_name(name) for name in reviewers}:
            raise PermissionError(f"{sorted(deciding)} may not decide: this store's reviewers are {list(reviewers)} "
                                  "(StoreConfig(reviewers=...)); a reviewer's decision overrules annotators. Label "
                                  "the item instead, or open the store as a reviewer. Nothing was written")

    def _check_undo_targets(self, conn: Connection, rows: list[dict]):
        """Refuse an undo of an event that is not the same annotator's, on the same item: a login that can label
        must not cancel a colleague's label (a reviewer overrules one with `decide`, which keeps both)."""
        undos = [r for r in rows if r["action"] == "undo"]
        if not undos:
            return
        e = events_table.c
        owners = {r["event_id"]: (r["annotator"], r["item_id"]) for r in rows}
        for chunk in _chunks(sorted({r["target"] for r in undos} - set(owners))):
            owners.update((event_id, (annotator, item_id)) for event_id, annotator, item_id in conn.execute(
                select(e.event_id, e.annotator, e.item_id).where(e.project == self.project, e.event_id.in_(chunk))))
        for undo in undos:
            owner = owners.get(undo["target"])
            if owner is None:
                raise ValueError(f"no event {undo['target']!r} to undo in {self!r}; nothing was written")
            if owner != (undo["annotator"], undo["item_id"]):
                raise PermissionError(f"{undo['annotator']!r} cannot undo event {undo['target']!r}, which "
                                      f"{owner[0]!r} recorded on item {owner[1]!r}: only its annotator can undo it, "
                                      "on that item (a reviewer overrules it with store.decide). Nothing was written")

    def _check_items(self, conn: Connection, rows: list[dict]):
        """Refuse events about items this project does not hold, and ratings of anything but a one-response item."""
        wanted = sorted({r["item_id"] for r in rows})
        for chunk in _chunks([item_id for item_id in wanted if item_id not in self._responses]):  # new to this store
            self._responses.update((item_id, len(responses)) for item_id, responses in conn.execute(
                select(items_table.c.item_id, items_table.c.responses).where(
                    items_table.c.project == self.project, items_table.c.item_id.in_(chunk))).all())
        for item_id in wanted:
            if item_id not in self._responses:
                raise ValueError(f"no item {item_id!r} in {self!r}; nothing was written. "
                                 f"Add it with store.add_items([...]) first, or check the project name")
        for r in rows:
            if r["choice"] in RATINGS and self._responses[r["item_id"]] != 1:
                raise ValueError(f"item {r['item_id']!r} has {self._responses[r['item_id']]} responses; 'up' / 'down' "
                                 f"rate an item with exactly one, so give a pair choice {CHOICES} or a ranking instead")

    def _stored_events(self, conn: Connection, event_ids: list[str]) -> dict[str, dict]:
        stored = {}
        for chunk in _chunks(sorted(set(event_ids))):
            rows = conn.execute(select(events_table).where(events_table.c.event_id.in_(chunk))).mappings()
            stored.update({r["event_id"]: dict(r) for r in rows})
        return stored

    # -- the derived tables -------------------------------------------------------------------------

    def _keep_in_force(self, conn: Connection, new: list[dict], items_are_new: bool = False):
        """Bring `in_force` and `coverage` in step with the events just appended (with their ids), in
        their transaction: three statements for a label, whatever the length of the log.

        Without an undo the newest answer per (item, annotator) is in force; a pair an undo touches
        is refolded from its own events (a few rows, by index), since the answer before comes back.
        """
        state: dict[tuple[str, str], dict | None] = {}
        for e in new:
            if e["action"] in ANSWERS:
                state[(e["item_id"], e["annotator"])] = e
        undone_events = list(self._stored_events(conn, [e["target"] for e in new if e["action"] == "undo"]).values())
        refolded = {(target["item_id"], target["annotator"]) for target in undone_events}
        if not state and not refolded:
            return
        # On Postgres two answers to one item, committed at once, would each count the item's answers and labels
        # without the other's, and an undo could refold its pair without an answer committed meanwhile: the
        # item's lock, taken before anything is read, makes the second writer wait for the first commit. Items
        # stored in this transaction are seen by no other until it commits, and Postgres' lock table holds
        # about 6,400 locks a transaction: an import of tens of thousands of pairs takes none.
        if not items_are_new:
            self._lock_items(conn, {item_id for item_id, _ in state.keys() | refolded})
        c = events_table.c
        for key in refolded:  # the answer before comes back: refold the pair from its own events (a few rows)
            pair = self._events(conn, annotator=key[1], item_id=key[0])
            undone = set(conn.scalars(select(c.target).where(c.project == self.project, c.action == "undo",
                                                             c.target.in_([e["event_id"] for e in pair]))))
            answers = [e for e in pair if e["action"] in ANSWERS and e["event_id"] not in undone]
            state[key] = answers[-1] if answers else None
        gone = [{"i": item_id, "a": who} for (item_id, who), e in state.items() if e is None]
        if gone:
            self._delete_pairs(conn, in_force_table, gone)
        now = {key: {"project": self.project, "item_id": e["item_id"], "annotator": e["annotator"],
                     "event_id": e["event_id"], "action": e["action"], "event_row": e["id"]}
               for key, e in state.items() if e}
        # The log's order is its ids, and Postgres hands ids out at insert, not at commit: an answer that commits
        # after a newer-id one of the same pair must not replace it (a refolded pair was read whole: it must).
        for newer_only in (True, False):
            rows = [row for key, row in now.items() if (key not in refolded) == newer_only]
            if rows:
                self._upsert(conn, in_force_table, rows, ("event_id", "action", "event_row"), newer_only)
        if now:
            self._delete_pairs(conn, leases_table, [{"i": e["item_id"], "a": e["annotator"]} for e in now.values()])

        def count_answers():
            cov = coverage_table.c
            answers, labels = _answers_on_item(), _answers_on_item("label")
            # Only rows whose counts changed are written: an edit of a label locks no row that other
            # annotators' labels of the same item must wait for.
            return (update(coverage_table).where(cov.project == self.project, cov.item_id == bindparam("i"),
                                                 (cov.labels != labels) | (cov.answers != answers))
                    .values(labels=labels, answers=answers))
        item_ids = [{"i": item_id} for item_id in sorted({item_id for item_id, _ in state})]
        conn.execute(self._built("count answers", count_answers), item_ids)

    def _delete_pairs(self, conn: Connection, table: Table, pairs: list[dict]):
        """Delete the rows of `table` (in_force or open_leases) of these (item "i", annotator "a") pairs."""
        def build():
            c = table.c
            return delete(table).where(c.project == self.project, c.item_id == bindparam("i"),
                                       c.annotator == bindparam("a"))
        conn.execute(self._built(("delete", table.name), build), pairs)

    def _lock_items(self, conn: Connection, item_ids):
        """On Postgres, wait for the items' advisory locks (held to commit), in one order for every writer; SQLite's
        write lock is already held. Each lock is an int4 pair, the project's key and the item's (a space apart from
        the project lock's one bigint key); two items that share a key only wait for each other."""
        def int4(text: str) -> int:
            key = zlib.crc32(text.encode())
            return key - 2**32 if key >= 2**31 else key

        if not self.is_sqlite:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, k) FROM (SELECT unnest(%s::int4[]) AS k ORDER BY k) "
                                 "AS ordered", (int4(self.project), sorted({int4(item_id) for item_id in item_ids})))

    def _rebuild(self, conn: Connection):
        """Derive `in_force` and `coverage` from the log and the items, from scratch."""
        conn.execute(delete(in_force_table).where(in_force_table.c.project == self.project))
        conn.execute(delete(coverage_table).where(coverage_table.c.project == self.project))
        queue = conn.execute(select(items_table.c.item_id, items_table.c.id, items_table.c.gold)
                             .where(items_table.c.project == self.project)).all()
        known = {item_id for item_id, _, _ in queue}
        state = {key: e for key, e in _fold(self._events(conn)).items() if key[0] in known}
        labels = Counter(item_id for (item_id, _), e in state.items() if e["action"] == "label")
        answers = Counter(item_id for item_id, _ in state)
        if queue:
            conn.execute(insert(coverage_table), [
                {"project": self.project, "item_id": item_id, "position": position, "gold": gold is not None,
                 "labels": labels[item_id], "answers": answers[item_id]} for item_id, position, gold in queue])
        if state:
            conn.execute(insert(in_force_table), [
                {"project": self.project, "item_id": e["item_id"], "annotator": e["annotator"],
                 "event_id": e["event_id"], "action": e["action"], "event_row": e["id"]} for e in state.values()])


def _checked_event(event: dict) -> dict:
    """Refuse events the derived views could not interpret, with the fix in the message."""
    action = event["action"]
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    if action in VERDICTS:
        if (event["choice"] is None) == (event["ranking"] is None):
            raise ValueError("a label needs exactly one of choice= (pairs, ratings) or ranking= (rankings)")
        if event["choice"] is not None and event["choice"] not in CHOICES + RATINGS:
            raise ValueError(f"choice must be one of {CHOICES} (pairs) or {RATINGS} (ratings), not {event['choice']!r}")
        if event["strength"] is not None and event["choice"] in RATINGS:
            raise ValueError(f"a rating ({event['choice']!r}) has no strength; leave strength=None, or compare a pair")
        if event["strength"] is not None and (event["strength"] not in STRENGTHS or event["choice"] not in ("a", "b")):
            raise ValueError(f"strength must be one of {STRENGTHS}, and only when 'a' or 'b' won")
        if event["ranking"] is not None and not all(isinstance(r, int) and r >= 1 for r in event["ranking"]):
            raise ValueError(f"ranking must give each response a rank 1 (best) or more, not {event['ranking']!r}")
    if action == "undo" and not event["target"]:
        raise ValueError("an undo needs target= the event_id it cancels")
    return event


def _answers_on_item(action: str | None = None):
    """SQL: how many annotators have an answer in force (of `action`, if given) on the `coverage` row being written."""
    cov, f = coverage_table.c, in_force_table.alias().c
    count = select(func.count()).where(f.project == cov.project, f.item_id == cov.item_id)
    return (count if action is None else count.where(f.action == action)).scalar_subquery()


def _new_events(rows: list[dict], stored: dict[str, dict]) -> list[dict]:
    """The rows to insert: an event_id already stored (or earlier in the batch) with the same content
    is a retry and is left out; with other content it is refused, naming what differs."""
    new, seen = [], {}
    for row in rows:
        earlier = stored.get(row["event_id"]) or seen.get(row["event_id"])
        if earlier is None:
            seen[row["event_id"]] = row
            new.append(row)
            continue
        differs = [k for k in ("project", *CONTENT) if earlier[k] != row[k]]
        if differs:
            raise ValueError(f"event {row['event_id']!r} is already stored with different content "
                             f"({', '.join(differs)} differ: {[earlier[k] for k in differs]} stored, "
                             f"{[row[k] for k in differs]} sent); nothing "
                             f"was written. A retry must resend the same event; a new answer needs a new event_id")
    return new


def _as_json(value):
    """`value` as the JSON column gives it back (tuples become lists), so a retry compares equal."""
    return None if value is None else json.loads(json.dumps(value))
