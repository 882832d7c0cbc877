"""A label store's queue: the item an annotator gets next (`next_item`: overlap, live leases, gold items mixed in at
`gold_rate`, a qualification round first), the lease kept while it stays on screen (`renew_lease`), what is left
(`progress`), and how each annotator does on gold items (`qualification`, `gold_accuracy`)."""

from __future__ import annotations

import secrets
import time
from collections import Counter, defaultdict

from sqlalchemy import Float, String, bindparam, func, literal, select, union_all, update
from sqlalchemy.engine import Connection

from ..records import Item
from .schema import _item_of, annotator_name, coverage_table, events_table, in_force_table, items_table, leases_table

__all__ = ["QueueMixin", "ANNOTATOR", "matches_gold", "QualificationFailed"]

UNPREDICTABLE = secrets.SystemRandom()  # the gold schedule's draws
# The values the assignment query binds when it runs (see `LabelStore._assignment`)
ANNOTATOR, NOW, EXCLUDE = (bindparam("annotator", type_=String), bindparam("now", type_=Float),
                           bindparam("exclude", expanding=True))
IN_QUEUE_ORDER, QUALIFYING = (None,), (True,)  # plans (see `LabelStore._plan`): any open item; gold items only


class QueueMixin:
    """The queue of `LabelStore`: who gets which item, leases, the gold schedule and the qualification round. It
    uses the store's `project`, `config`, `_qualified` and `_responses`, its transactions (`_write`, `_read`,
    `_retrying`) and statements (`_built`, `_upsert`)."""

    # -- assignment ---------------------------------------------------------------------------------

    def next_item(self, annotator: str, exclude: set[str] | frozenset = frozenset()) -> Item | None:
        """The next item for `annotator`, leased to them for `config.lease_seconds`; None when done.

        Their own live lease comes first (a reload resumes the item on screen); then the oldest item
        they have not answered that is gold, or whose labels plus others' live leases are fewer than
        `overlap`. All of it is one query of a few index ranges, whatever the length of the log.
        """
        annotator, now = annotator_name(annotator), time.time()

        def assign():
            with self._write(durable=False) as conn:
                plan = self._plan(conn, annotator)
                chosen = conn.execute(self._assignment(plan, excluding=bool(exclude)),
                                      {"annotator": annotator, "now": now,
                                       "exclude": sorted(exclude)}).mappings().first()
                if chosen is None and plan == QUALIFYING:
                    round_ = self._qualification(conn, annotator)
                    raise QualificationFailed(
                        f"{annotator!r} has labeled {round_['answered']} of the {round_['required']} gold items of "
                        f"the qualification round and none is left for them (skipped ones do not count): add gold "
                        f"items (Item(..., gold=...)) or lower StoreConfig.qualification")
                if chosen is not None:
                    self._upsert(conn, leases_table, [{"project": self.project, "item_id": chosen["item_id"],
                                                       "annotator": annotator,
                                                       "expires_at": now + self.config.lease_seconds}],
                                 ("expires_at",))
                    self._responses[chosen["item_id"]] = len(chosen["responses"])
                return chosen

        row = self._retrying(assign)
        return None if row is None else _item_of(row)

    def renew_lease(self, item_id: str, annotator: str) -> bool:
        """Keep `annotator`'s item: their lease on `item_id` gets `config.lease_seconds` more from now, as the
        widget asks while the item stays on screen, so a slow reader is not handed a duplicate by the queue.

        A lease that ran out (a hidden tab, a sleeping laptop) is taken again while the item still has room for
        them: a gold item always, another while its labels and others' live leases are fewer than `overlap`.
        Returns False when it has none: it went to someone else, and an answer now would exceed the overlap.
        """
        annotator, now = annotator_name(annotator), time.time()
        lease, c = leases_table.c, coverage_table.c

        def renew():
            with self._write(durable=False) as conn:
                if conn.execute(update(leases_table).where(
                        lease.project == self.project, lease.item_id == item_id, lease.annotator == annotator,
                        lease.expires_at > now).values(expires_at=now + self.config.lease_seconds)).rowcount:
                    return True
                others = self._leased_by_others(c.item_id, annotator, now)
                room = conn.execute(select(c.gold | (c.labels + others < self.config.overlap)).where(
                    c.project == self.project, c.item_id == item_id)).scalar()
                if room:
                    self._upsert(conn, leases_table, [{"project": self.project, "item_id": item_id, "annotator":
                                                       annotator, "expires_at": now + self.config.lease_seconds}],
                                 ("expires_at",))
                return bool(room)

        return self._retrying(renew)

    def _plan(self, conn: Connection, annotator: str) -> tuple:
        """Which new items `annotator` may get, in order of preference, as the `gold` arguments of `_oldest_open`:
        gold only until they pass the qualification round (QUALIFYING); then gold at `gold_rate` among the real
        items (either kind when the other has run out), or without a `gold_rate` the queue as it stands."""
        if self.config.qualification and annotator not in self._qualified:
            round_ = self._qualification(conn, annotator)
            if round_["passed"] is None:
                return QUALIFYING
            if not round_["passed"]:
                raise QualificationFailed(
                    f"{annotator!r} did not pass the qualification round: {round_['correct']} of "
                    f"{round_['required']} gold items right, and this project asks for "
                    f"{self.config.qualification_accuracy:.0%}. Read the guidelines again and ask the project lead "
                    f"to go over these items with you; no real items are served until then")
            self._qualified.add(annotator)
        if self.config.gold_rate is None:
            return IN_QUEUE_ORDER
        gold = self._gold_due(conn, annotator)
        return (gold, not gold)

    def _gold_due(self, conn: Connection, annotator: str) -> bool:
        """Whether the next new item should be gold: randomised rounding of `gold_rate` x answers, so the
        share of gold never drifts by a whole item, and no fixed period tells an annotator which is gold."""
        f, c = in_force_table.c, coverage_table.c
        answered, gold = conn.execute(
            select(func.count(), func.count().filter(c.gold))
            .join(coverage_table, (c.project == f.project) & (c.item_id == f.item_id))
            .where(f.project == self.project, f.annotator == annotator)).one()
        due = self.config.gold_rate * (answered + 1) - gold  # gold items owed once this one is answered
        # A draw from the system's randomness, which no annotator can compute from what they see (a hash of
        # project, name and count could be). A reload needs no stable draw: the item leased is served again.
        return due > UNPREDICTABLE.random()

    def qualification(self, annotator: str) -> dict:
        """The annotator's qualification round: gold items `required`, how many they `answered` (their
        first label on each, so an edit after seeing the answer changes nothing) and got `correct`;
        `passed` is None while the round runs, then True or False."""
        with self._read() as conn:
            return self._qualification(conn, annotator_name(annotator))

    def _qualification(self, conn: Connection, annotator: str) -> dict:
        e, i, c = events_table.c, items_table.c, coverage_table.c
        rows = conn.execute(
            select(e.item_id, e.choice, e.ranking, i.gold)
            .join(coverage_table, (c.project == e.project) & (c.item_id == e.item_id))
            .join(items_table, (i.project == e.project) & (i.item_id == e.item_id))
            .where(e.project == self.project, e.annotator == annotator, e.action == "label", c.gold)
            .order_by(e.id)).mappings()
        first: dict[str, bool] = {}
        for row in rows:
            if row["item_id"] not in first and len(first) < self.config.qualification:
                first[row["item_id"]] = matches_gold(row, row["gold"])
        required, correct = self.config.qualification, sum(first.values())
        passed = None if len(first) < required else correct >= self.config.qualification_accuracy * required
        return {"required": required, "answered": len(first), "correct": correct, "passed": passed}

    def _answered(self, annotator, item_id) -> object:
        """SQL: `annotator` (None: anyone) has an answer in force on `item_id` (a column of the enclosing query)."""
        f = in_force_table.alias()
        query = select(f.c.item_id).where(f.c.project == self.project, f.c.item_id == item_id)
        return (query if annotator is None else query.where(f.c.annotator == annotator)).exists()

    def _assignment(self, plan: tuple, excluding: bool):
        """The query behind `next_item` under `plan` (see `_plan`), with the annotator, the time and the items to
        exclude bound when it runs. It ranks a few candidates, each a query for at most one (item_id, position):
        the annotator's own lease first, then the groups of `plan` in order, and within a group the oldest in queue
        order. All of them run as one statement, each an index range walked in queue order."""
        def build():
            groups = [[self._own_lease(excluding)], *(self._oldest_open(gold, excluding) for gold in plan)]
            ranked = union_all(*(select(literal(rank).label("rank"), found.c.item_id, found.c.position)
                                 for rank, group in enumerate(groups) for found in (q.subquery() for q in group)))
            best, i = ranked.subquery(), items_table.c
            return (select(items_table).join(best, (i.project == self.project) & (i.item_id == best.c.item_id))
                    .order_by(best.c.rank, best.c.position).limit(1))
        return self._built(("assignment", plan, excluding), build)

    def _own_lease(self, excluding: bool):
        """A candidate (see `_assignment`): the annotator's oldest live lease on an item they have not answered."""
        lease, c = leases_table.c, coverage_table.c
        query = (select(c.item_id, c.position)
                 .join(leases_table, (c.project == lease.project) & (c.item_id == lease.item_id))
                 .where(lease.project == self.project, lease.annotator == ANNOTATOR, lease.expires_at > NOW,
                        ~self._answered(ANNOTATOR, lease.item_id)).order_by(c.position).limit(1))
        return query.where(lease.item_id.not_in(EXCLUDE)) if excluding else query

    def _oldest_open(self, gold: bool | None, excluding: bool) -> list:
        """Candidates (see `_assignment`) whose oldest is the oldest gold item, or item with v < overlap labels
        for some v, that the annotator may take (`gold`: only gold items, or only real ones)."""
        c = coverage_table.c
        base = select(c.item_id, c.position).where(c.project == self.project, ~self._answered(ANNOTATOR, c.item_id))
        if excluding:
            base = base.where(c.item_id.not_in(EXCLUDE))
        found = [base.where(c.gold).order_by(c.position).limit(1)] if gold is not False else []
        if gold:
            return found
        # Others holding a live lease and no answer yet count toward the overlap, so that two annotators
        # are not handed the last open slot of one item at once.
        leased_by_others = self._leased_by_others(c.item_id, ANNOTATOR, NOW)
        for labels in range(self.config.overlap):  # one index range per count: each walks in queue order
            found.append(base.where(~c.gold, c.labels == labels, leased_by_others < self.config.overlap - labels)
                         .order_by(c.position).limit(1))
        return found

    def _leased_by_others(self, item_id, annotator, now):
        """SQL: how many others hold a live lease on `item_id` and have no answer on it yet (they count toward the
        overlap). Each argument is a column, a bound parameter or a value."""
        lease = leases_table.c
        return select(func.count()).where(
            lease.project == self.project, lease.item_id == item_id, lease.expires_at > now,
            lease.annotator != annotator, ~self._answered(lease.annotator, lease.item_id)).scalar_subquery()

    def progress(self, annotator: str | None = None) -> dict:
        """Items in the queue, items nobody has answered yet, answers in force per annotator; and for
        `annotator`: their labels, skips and prompt flags in force (each counted once, as their
        latest answer on the item) and how many items are left for them (ignoring others' leases)."""
        c, f = coverage_table.c, in_force_table.c
        with self._read() as conn:
            items = conn.scalar(select(func.count()).where(c.project == self.project))
            # The `answers = 0` range of `coverage_untouched`, each item checked in `in_force`: a kernel still running
            # an older rlhflab answers without counting, and an item it answered must not look untouched, or a
            # generation queue waiting for fewer untouched items would wait for good (20 ms at 100,000 untouched items,
            # 3.7 unchecked)
            untouched = conn.scalar(select(func.count()).where(c.project == self.project, c.answers == 0,
                                                              ~self._answered(None, c.item_id)))
            done = dict(conn.execute(select(f.annotator, func.count()).where(f.project == self.project)
                                     .group_by(f.annotator)).all())
            out = {"items": items, "untouched": untouched, "by_annotator": done}
            if annotator is not None:
                annotator = annotator_name(annotator)
                mine = Counter(dict(conn.execute(select(f.action, func.count()).where(
                    f.project == self.project, f.annotator == annotator).group_by(f.action)).all()))
                out.update(labelled=mine["label"], skipped=mine["skip"], flagged=mine["flag_prompt"])
                # Two index ranges of `coverage_queue`, gold items and real ones short of the overlap, not the whole
                # queue: at 100,000 items, 2.1 ms instead of 12.6 (a condition "gold or short" ranges over neither)
                open_items = [select(func.count()).where(c.project == self.project, open_,
                                                         ~self._answered(annotator, c.item_id)).scalar_subquery()
                              for open_ in (c.gold, ~c.gold & (c.labels < self.config.overlap))]
                out["remaining"] = conn.scalar(select(open_items[0] + open_items[1]))
        return out

    # -- calibration --------------------------------------------------------------------------------

    def gold_accuracy(self) -> dict[str, dict]:
        """Per annotator, on items with a gold answer: how many they labeled and the share that matched.

        Each annotator's first label on a gold item counts, as in the qualification round: an edit or an undo
        after the gold feedback showed the expected answer changes nothing."""
        e, i, c = events_table.c, items_table.c, coverage_table.c
        with self._read() as conn:
            rows = conn.execute(
                select(e.annotator, e.item_id, e.choice, e.ranking, i.gold)
                .join(coverage_table, (c.project == e.project) & (c.item_id == e.item_id))
                .join(items_table, (i.project == e.project) & (i.item_id == e.item_id))
                .where(e.project == self.project, e.action == "label", c.gold)
                .order_by(e.id)).mappings().all()
        first: dict[tuple[str, str], bool] = {}
        for row in rows:
            first.setdefault((row["annotator"], row["item_id"]), matches_gold(row, row["gold"]))
        scores: dict[str, list[bool]] = defaultdict(list)
        for (who, _), hit in first.items():
            scores[who].append(hit)
        return {who: {"gold_items": len(hits), "accuracy": sum(hits) / len(hits)}
                for who, hits in sorted(scores.items())}


def matches_gold(label, gold) -> bool:
    """Whether a label gives the gold answer: the same choice (strength aside) or the same ranks."""
    return (label["ranking"] if label.get("ranking") is not None else label["choice"]) == gold


class QualificationFailed(Exception):
    """The annotator has not passed the qualification round (`StoreConfig.qualification`), so no real
    item is served to them; the message says why and what to do."""
