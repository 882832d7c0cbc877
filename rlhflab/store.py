"""LabelStore: every label ever given, as an append-only event log on SQLAlchemy Core.

One SQLite file (WAL mode, fsync on every commit) holds a project on a laptop or a shared
JupyterHub disk; a Postgres URL lets annotators on separate machines (Colab) label together.

Three tables, all insert-only:

    items    what can be labeled: a prompt and K responses (K = 2 for pairs, 1 for a reply to rate
             up or down), the policy that wrote each response, and optionally a gold answer for
             calibration items
    events   one row per action: label (a choice, a ranking or a rating), skip, flag_prompt (a bad
             prompt), undo
    leases   "annotator X is looking at item Y until time T", so that an abandoned item goes back
             to the queue when its lease runs out

Nothing is updated in place or deleted. An edit is a new label for the same item; an undo is an
event naming the event it cancels. The current view (`labels()`) is derived by folding the log, so
every state the project ever had can be reconstructed. `record` returns only after the commit, so a
label is durable before the widget shows the next item.

Assignment: each item should get `overlap` annotators. `next_item` hands an annotator the oldest item
they have not labeled whose labels plus live leases by others are fewer than `overlap`; gold items
go to everyone, which is what makes per-annotator accuracy on them meaningful.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (JSON, Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        create_engine, event, func, insert, select)
from sqlalchemy.engine import Connection, Engine

from .records import Item

ACTIONS = ("label", "skip", "flag_prompt", "undo")
CHOICES = ("a", "b", "tie", "both_bad")  # of a pair; 'a' / 'b' name the responses as stored, never as shown
# A rating is a label too: thumbs up or down on an item with exactly one response. It decides no pair;
# KTO learns from it (rlhflab.exports.kto_rows). Undo and edit work on it as on any other label.
RATINGS = ("up", "down")
STRENGTHS = ("slightly", "clearly", "much")


@dataclass
class StoreConfig:
    overlap: int = 1  # annotators each item should get (m); gold items go to every annotator
    lease_seconds: float = 600.0  # an item handed out and not labeled within this returns to the queue
    synchronous: str = "FULL"  # SQLite fsync policy: FULL survives power loss, NORMAL only process crashes
    busy_timeout_s: float = 60.0  # how long a SQLite writer waits for another process's commit

    def __post_init__(self):
        if self.overlap < 1:
            raise ValueError(f"overlap must be at least 1 annotator per item, not {self.overlap}")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be 'FULL', 'NORMAL' or 'EXTRA', not {self.synchronous!r}")


metadata = MetaData()
items_table = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # insertion order = queue order
    Column("item_id", String(64), nullable=False),  # content hash unless the user names it
    Column("project", String(200), nullable=False),
    Column("prompt", Text, nullable=False),
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
    Column("action", String(16), nullable=False),  # label | skip | flag_prompt | undo
    Column("choice", String(16)),  # a | b | tie | both_bad (pairs), up | down (a rating of one response)
    Column("strength", String(16)),  # slightly | clearly | much (when a or b won)
    Column("ranking", JSON),  # ranks per response, 1 = best, equal ranks = tie (rankings)
    Column("flags", JSON),  # {"a": ["harmful", ...], "b": [...]} per response
    Column("rationale", Text),
    Column("shown_order", JSON),  # response indices left to right as the annotator saw them
    Column("target", String(32)),  # the event an undo cancels
    Column("created_at", Float, nullable=False),
)
leases_table = Table(
    "leases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(200), nullable=False, index=True),
    Column("item_id", String(64), nullable=False),
    Column("annotator", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)


def engine_for(url_or_path: str | Path, config: StoreConfig) -> Engine:
    """A SQLAlchemy engine: a path means a SQLite file (WAL, immediate write locks); else a URL."""
    url = str(url_or_path)
    if "://" not in url:
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(url).expanduser()}"
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver the lab ships
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError("an in-memory SQLite store loses every label when the kernel stops; "
                         "pass a file path such as 'labels.db'")
    engine = create_engine(url, connect_args={"timeout": config.busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, and vice versa
        cursor.execute(f"PRAGMA synchronous={config.synchronous.upper()}")
        cursor.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # Writers take the write lock up front: a deferred transaction that reads and then writes can
        # fail with SQLITE_BUSY when another process committed in between, and that is not retried.
        # Readers begin deferred and read a snapshot without waiting for anyone.
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class LabelStore:
    """The durable home of one labeling project's items and labels.

    Args:
        url: a SQLite file path ('labels.db') or a database URL ('postgresql://user@host/db').
        project: name of the project inside the database; one database can hold several.
        config: overlap, leases and SQLite durability settings.

    Examples:
        >>> import tempfile, os
        >>> store = LabelStore(os.path.join(tempfile.mkdtemp(), "labels.db"))
        >>> [item] = store.add_items([Item("What color is the fox?", ("The fox is red.", "Go away."))])
        >>> store.next_item("ada").prompt
        'What color is the fox?'
        >>> _ = store.record(item.item_id, "ada", choice="a", strength="much", shown_order=[1, 0])
        >>> store.labels()[0]["choice"], store.next_item("ada")
        ('a', None)
    """

    def __init__(self, url: str | Path = "labels.db", project: str = "default", config: StoreConfig | None = None):
        self.config = config or StoreConfig()
        self.project = project
        self.engine = engine_for(url, self.config)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        with self._write() as conn:
            metadata.create_all(conn)

    def __repr__(self) -> str:
        return f"LabelStore({self.engine.url.render_as_string(hide_password=True)!r}, project={self.project!r})"

    def close(self):
        self.engine.dispose()

    # -- transactions ---------------------------------------------------------------------------

    def _write(self, serialise: bool = True):
        """A write transaction. SQLite always takes the database's write lock; on Postgres, `serialise`
        takes a per-project lock so that assignment cannot race (plain appends need none)."""
        return _WriteTransaction(self, serialise)

    def _read(self):
        return self.engine.connect().execution_options(read_only=True)

    # -- items ------------------------------------------------------------------------------------

    def add_items(self, items) -> list[Item]:
        """Store new items (one transaction); items already stored, by item_id, are left alone.

        Returns the items that were new.
        """
        items = list(items)
        now = time.time()
        with self._write() as conn:
            known = set(conn.scalars(select(items_table.c.item_id).where(items_table.c.project == self.project)))
            new = []
            for item in items:
                if item.item_id not in known:
                    known.add(item.item_id)
                    new.append(item)
            if new:
                conn.execute(insert(items_table), [
                    {"item_id": i.item_id, "project": self.project, "prompt": i.prompt,
                     "responses": list(i.responses), "sources": list(i.sources), "gold": i.gold,
                     "meta": i.meta or None, "created_at": now} for i in new])
        return new

    def items(self) -> dict[str, Item]:
        """Every item of the project, in queue order, keyed by item_id."""
        with self._read() as conn:
            rows = conn.execute(select(items_table).where(items_table.c.project == self.project)
                                .order_by(items_table.c.id)).mappings()
            return {r["item_id"]: _item_of(r) for r in rows}

    def item(self, item_id: str) -> Item:
        with self._read() as conn:
            row = conn.execute(select(items_table).where(items_table.c.project == self.project,
                                                         items_table.c.item_id == item_id)).mappings().first()
        if row is None:
            raise KeyError(f"no item {item_id!r} in {self!r}; add it with store.add_items([...]) first")
        return _item_of(row)

    # -- events -----------------------------------------------------------------------------------

    def record(self, item_id: str, annotator: str, *, action: str = "label", choice: str | None = None,
               strength: str | None = None, ranking: list[int] | None = None, flags: dict | None = None,
               rationale: str | None = None, shown_order: list[int] | None = None, session: str | None = None,
               target: str | None = None, event_id: str | None = None) -> str:
        """Append one event and commit it; returns its event_id once it is durable.

        A label of a pair gives `choice` (and `strength` when 'a' or 'b' won); a label of a ranking
        gives `ranking`; a rating of a one-response item gives `choice='up'` or `'down'`. Labeling an
        item again is an edit: the newest label counts.
        """
        return self.record_many([dict(
            item_id=item_id, annotator=annotator, action=action, choice=choice, strength=strength, ranking=ranking,
            flags=flags, rationale=rationale, shown_order=shown_order, session=session, target=target,
            event_id=event_id)])[0]

    def record_many(self, events: list[dict]) -> list[str]:
        """Append many events (each the keyword arguments of `record`) in one transaction: all or none."""
        rows = [_checked_event(dict(
            event_id=e.get("event_id") or uuid.uuid4().hex, project=self.project, item_id=e["item_id"],
            annotator=e["annotator"], session=e.get("session"), action=e.get("action", "label"),
            choice=e.get("choice"), strength=e.get("strength"), ranking=e.get("ranking"), flags=e.get("flags") or None,
            rationale=e.get("rationale") or None, shown_order=e.get("shown_order"), target=e.get("target"),
            created_at=time.time())) for e in events]
        rated = {r["item_id"] for r in rows if r["action"] == "label" and r["choice"] in RATINGS}
        if rows:
            with self._write(serialise=False) as conn:
                if rated:  # only ratings need their item: pairs and imports append without reading
                    self._check_rated(conn, rated)
                conn.execute(insert(events_table), rows)
        return [r["event_id"] for r in rows]

    def _check_rated(self, conn: Connection, item_ids: set[str]):
        """Refuse a rating of anything but a stored item with exactly one response."""
        responses = dict(conn.execute(select(items_table.c.item_id, items_table.c.responses).where(
            items_table.c.project == self.project, items_table.c.item_id.in_(item_ids))).all())
        for item_id in sorted(item_ids):
            if item_id not in responses:
                raise KeyError(f"no item {item_id!r} in {self!r}; add it with store.add_items([...]) before rating it")
            if len(responses[item_id]) != 1:
                raise ValueError(f"item {item_id!r} has {len(responses[item_id])} responses; 'up' / 'down' rate an "
                                 f"item with exactly one, so give a pair choice {CHOICES} or a ranking instead")

    def skip(self, item_id: str, annotator: str, **kwargs) -> str:
        return self.record(item_id, annotator, action="skip", **kwargs)

    def flag_prompt(self, item_id: str, annotator: str, rationale: str | None = None, **kwargs) -> str:
        """Mark the prompt itself as bad (unanswerable, harmful, garbled); it leaves this annotator's queue."""
        return self.record(item_id, annotator, action="flag_prompt", rationale=rationale, **kwargs)

    def undo(self, annotator: str, event_id: str | None = None, session: str | None = None) -> dict | None:
        """Cancel `event_id`, or the annotator's latest event still in force; returns the cancelled event."""
        with self._read() as conn:
            events = self._events(conn, annotator=annotator)
        undone = {e["target"] for e in events if e["action"] == "undo"}
        live = [e for e in events if e["action"] != "undo" and e["event_id"] not in undone]
        if event_id is not None:
            live = [e for e in live if e["event_id"] == event_id]
        if not live:
            return None
        target = live[-1]
        self.record(target["item_id"], annotator, action="undo", target=target["event_id"], session=session)
        return target

    def events(self, annotator: str | None = None) -> list[dict]:
        """The raw log, oldest first."""
        with self._read() as conn:
            return self._events(conn, annotator=annotator)

    def _events(self, conn: Connection, annotator: str | None = None) -> list[dict]:
        query = select(events_table).where(events_table.c.project == self.project)
        if annotator is not None:
            query = query.where(events_table.c.annotator == annotator)
        return [dict(r) for r in conn.execute(query.order_by(events_table.c.id)).mappings()]

    # -- the current view -------------------------------------------------------------------------

    def current(self, events: list[dict] | None = None) -> dict[tuple[str, str], dict]:
        """(item_id, annotator) -> the event in force: the newest label/skip/flag not undone."""
        return _fold(self.events() if events is None else events)

    def _state(self, conn: Connection, annotator: str | None = None) -> dict[tuple[str, str], dict]:
        """`current` from the few columns the fold needs (no JSON to parse): what assignment reads."""
        c = events_table.c
        query = select(c.id, c.event_id, c.item_id, c.annotator, c.action, c.target).where(c.project == self.project)
        if annotator is not None:
            query = query.where(c.annotator == annotator)
        return _fold([dict(r) for r in conn.execute(query.order_by(c.id)).mappings()])

    def _queue(self, conn: Connection) -> list[tuple[str, object]]:
        """(item_id, gold) of every item, in queue order."""
        return conn.execute(select(items_table.c.item_id, items_table.c.gold)
                            .where(items_table.c.project == self.project).order_by(items_table.c.id)).all()

    def labels(self) -> list[dict]:
        """The labels in force, one per (item, annotator), oldest first; skips and undone labels left out."""
        return sorted((e for e in self.current().values() if e["action"] == "label"), key=lambda e: e["id"])

    # -- assignment ---------------------------------------------------------------------------------

    def next_item(self, annotator: str, exclude: set[str] | frozenset = frozenset()) -> Item | None:
        """The next item for `annotator`, leased to them for `config.lease_seconds`; None when done."""
        now = time.time()
        with self._write() as conn:
            state, items = self._state(conn), self._queue(conn)
            leases = conn.execute(select(leases_table.c.item_id, leases_table.c.annotator)
                                  .where(leases_table.c.project == self.project,
                                         leases_table.c.expires_at > now)).all()
            chosen = _assign(annotator, items, state, leases, self.config.overlap, exclude)
            if chosen is None:
                return None
            conn.execute(insert(leases_table), [{"project": self.project, "item_id": chosen, "annotator": annotator,
                                                  "expires_at": now + self.config.lease_seconds}])
            row = conn.execute(select(items_table).where(items_table.c.project == self.project,
                                                         items_table.c.item_id == chosen)).mappings().one()
        return _item_of(row)

    def progress(self, annotator: str | None = None) -> dict:
        """Items done per annotator, items nobody has touched yet, and how many are left for `annotator`
        (ignoring others' leases)."""
        with self._read() as conn:
            state, items = self._state(conn), self._queue(conn)
        done = Counter(who for _, who in state)
        touched = {item_id for item_id, _ in state}
        out = {"items": len(items), "untouched": len(items) - len(touched), "by_annotator": dict(done)}
        if annotator is not None:
            coverage = Counter(item_id for (item_id, _), e in state.items() if e["action"] == "label")
            out["labelled"] = done.get(annotator, 0)
            out["remaining"] = sum(1 for item_id, gold in items if (item_id, annotator) not in state
                                   and (gold is not None or coverage[item_id] < self.config.overlap))
        return out

    def recent(self, annotator: str, n: int = 10) -> list[dict]:
        """The annotator's `n` latest events in force, newest first, each with its item's prompt."""
        with self._read() as conn:
            mine = sorted(self._state(conn, annotator).values(), key=lambda e: e["id"], reverse=True)[:n]
            rows = conn.execute(select(events_table).where(events_table.c.event_id.in_([e["event_id"] for e in mine])))
            full = {r["event_id"]: dict(r) for r in rows.mappings()}
            prompts = dict(conn.execute(select(items_table.c.item_id, items_table.c.prompt).where(
                items_table.c.project == self.project, items_table.c.item_id.in_([e["item_id"] for e in mine]))).all())
        return [{**full[e["event_id"]], "prompt": prompts[e["item_id"]]} for e in mine]

    # -- calibration --------------------------------------------------------------------------------

    def gold_accuracy(self) -> dict[str, dict]:
        """Per annotator, on items with a gold answer: how many they labeled and the share that matched."""
        items = {k: v for k, v in self.items().items() if v.gold is not None}
        scores: dict[str, list[bool]] = defaultdict(list)
        for label in self.labels():
            item = items.get(label["item_id"])
            if item is not None:
                given = label["ranking"] if label["ranking"] is not None else label["choice"]
                scores[label["annotator"]].append(given == item.gold)
        return {who: {"gold_items": len(hits), "accuracy": sum(hits) / len(hits)} for who, hits in sorted(scores.items())}


def _fold(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Replay the log: an undo cancels its target; the newest surviving event per (item, annotator) counts."""
    undone = {e["target"] for e in events if e["action"] == "undo"}
    state: dict[tuple[str, str], dict] = {}
    for e in events:
        if e["action"] != "undo" and e["event_id"] not in undone:
            state[(e["item_id"], e["annotator"])] = e
    return state


class _WriteTransaction:
    """`with store._write() as conn:` - BEGIN IMMEDIATE on SQLite, a per-project advisory lock on Postgres."""

    def __init__(self, store: LabelStore, serialise: bool):
        self.store, self.serialise = store, serialise

    def __enter__(self) -> Connection:
        self._context = self.store.engine.begin()
        conn = self._context.__enter__()
        if self.serialise and not self.store.is_sqlite:
            conn.execute(select(func.pg_advisory_xact_lock(zlib.crc32(self.store.project.encode()))))
        return conn

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def _assign(annotator, items, state, leases, overlap, exclude) -> str | None:
    """Pure assignment rule: the annotator's own live lease first, then the oldest under-covered item."""
    coverage = defaultdict(set)
    for (item_id, who), e in state.items():
        if e["action"] == "label":
            coverage[item_id].add(who)
    leased_by_others = defaultdict(set)
    mine = set()
    for item_id, who in leases:
        if who == annotator:
            mine.add(item_id)
        elif (item_id, who) not in state:
            leased_by_others[item_id].add(who)
    open_items = [(item_id, gold) for item_id, gold in items
                  if (item_id, annotator) not in state and item_id not in exclude]
    for item_id, _ in open_items:
        if item_id in mine:
            return item_id
    for item_id, gold in open_items:
        if gold is not None or len(coverage[item_id] | leased_by_others[item_id]) < overlap:
            return item_id
    return None


def _checked_event(event: dict) -> dict:
    """Refuse events the derived views could not interpret, with the fix in the message."""
    action = event["action"]
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    if not event["annotator"] or not isinstance(event["annotator"], str):
        raise ValueError("every event needs an annotator name; pass annotator='your-name'")
    if action == "label":
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


def _item_of(row) -> Item:
    return Item(prompt=row["prompt"], responses=tuple(row["responses"]), sources=tuple(row["sources"]),
                gold=row["gold"], meta=row["meta"] or {}, item_id=row["item_id"])
