"""`LabelStore`, the door to one labeling project: it opens the store (creating or upgrading its tables), stores
items, and holds the transactions and prepared statements that its parts share: the event log (`log`), what the
log says (`views`) and the queue (`queue`), each mixed in."""

from __future__ import annotations

import sqlite3
import time
import zlib
from contextlib import closing
from pathlib import Path

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from ..records import Conversation, Item, prompt_text
from .engine import APPLICATION_ID, engine_for
from .log import EventLogMixin, _answers_on_item
from .queue import QueueMixin
from .schema import (BULK_ROWS, CHOICES, RATINGS, SCHEMA_LOCK, StoreConfig, _add_missing_columns, _chunks, _fits,
                     _item_of, coverage_table, events_table, in_force_table, items_table, metadata)
from .views import ViewsMixin

__all__ = ["LabelStore"]


class LabelStore(EventLogMixin, ViewsMixin, QueueMixin):
    """The durable home of one labeling project's items and labels.

    Its methods live with what they do: appending events in `log.EventLogMixin`, reading the log and what is in
    force in `views.ViewsMixin`, the queue in `queue.QueueMixin`. This class opens the store, stores items, and
    holds the transactions and statements they share.

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
        self._qualified: set[str] = set()  # annotators who passed the qualification round (it cannot be undone)
        self._responses: dict[str, int] = {}  # item_id -> its number of responses (items never change)
        self._statements: dict = {}  # see `_built`
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        try:
            self._upgrade()
        except ProgrammingError as error:
            if getattr(error.orig, "sqlstate", None) != "42501":  # Postgres' insufficient_privilege
                raise
            self.engine.dispose()
            login = repr(self.engine.url.username) if self.engine.url.username else "this login"
            raise PermissionError(
                f"{self!r}: {login} may not set up the store's tables ({str(error.orig).strip()}); nothing was "
                f"changed. A new store, or one written by an older rlhflab, is set up by the owner of its tables: "
                f"open it once with the owner's URL, then again as {login}. If the owner has, {login} lacks a "
                f"grant: run the SQL that `rlhflab annotator-role` prints") from None

    def _upgrade(self):
        """Create what the store lacks: its tables, or the columns and indexes a newer rlhflab added; and derive
        the current state from the log where it is missing or incomplete."""
        project = self.project
        with self._write() as conn:
            if not self.is_sqlite:  # two kernels opening two projects of one old store would both add a column
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            metadata.create_all(conn)
            if self.is_sqlite:  # the file says whose it is (`refuse_foreign_file`)
                conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
            _add_missing_columns(conn, items_table)  # create_all adds no column to a table that exists: stores
            _add_missing_columns(conn, events_table)  # written before items.conversation, events.shown_at, or
            if _add_missing_columns(conn, coverage_table):  # coverage.answers: every project's,
                conn.execute(update(coverage_table).values(answers=_answers_on_item()))  # not just this one's
            for index in (*events_table.indexes, *coverage_table.indexes):  # nor an index
                index.create(conn, checkfirst=True)
            count = func.count()
            items = conn.scalar(select(count).where(items_table.c.project == project))
            if conn.scalar(select(count).where(coverage_table.c.project == project)) != items:
                self._rebuild(conn)  # written before the derived tables existed
                self._after_bulk_write(conn, items, in_force_table, coverage_table)

    def __repr__(self) -> str:
        return f"LabelStore({self.engine.url.render_as_string(hide_password=True)!r}, project={self.project!r})"

    def close(self):
        """Close the store's connections; on SQLite, then move the WAL's committed labels into the database
        file itself, so a copy of that one file (a backup, a synced folder) holds them all."""
        self.engine.dispose()
        if self.is_sqlite and Path(self.engine.url.database).exists():  # outside any transaction; the last
            # connection to close would do it too, but other kernels may still hold the store open
            with closing(sqlite3.connect(self.engine.url.database, timeout=self.config.busy_timeout_s)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, path: str | Path) -> Path:
        """A consistent copy of a SQLite store, every project in it, taken while others go on labeling (SQLite's
        online backup: writers wait only while a page batch is copied). A team's only copy of its labels
        deserves one before an upgrade or a move. On Postgres, the server's own tool does this: the error says
        which command."""
        if not self.is_sqlite:
            raise NotImplementedError("back up a Postgres store with the server's tool: pg_dump --format=custom "
                                      f"--file labels.dump --dbname '{self.engine.url.render_as_string()}' "
                                      "with your password where *** stands (pg_restore reads the file back)")
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; give a new path so no earlier backup is overwritten")
        path.parent.mkdir(parents=True, exist_ok=True)
        source = self.engine.raw_connection()
        try:
            with sqlite3.connect(path) as copy:
                source.driver_connection.backup(copy)
            copy.close()
        finally:
            source.close()
        return path

    # -- transactions ---------------------------------------------------------------------------

    def _write(self, serialise: bool = True, durable: bool = True):
        """A write transaction. SQLite always takes the database's write lock; on Postgres, `serialise`
        takes a per-project lock so that assignment cannot race (plain appends need none), and
        `durable=False` commits without waiting for the disk (leases: a crash only returns their items to
        the queue), so the lock is held for no fsync."""
        return _WriteTransaction(self, serialise, durable)

    def _read(self):
        return self.engine.connect().execution_options(read_only=True)

    @staticmethod
    def _retrying(work):
        """`work()` (its own transactions), and once more after a dropped connection, a timed-out
        statement or a lost race with another writer (two sends of one event_id): the second try
        sees what the other writer committed, so a retried event is stored once."""
        try:
            return work()
        except (OperationalError, IntegrityError):
            return work()

    # -- items ------------------------------------------------------------------------------------

    def add_items(self, items, label: dict | None = None) -> list[Item]:
        """Store new items (one transaction); items already stored, by item_id, are left alone.

        `label` (the keyword arguments of `record` but the item, e.g. {'annotator': 'hh-rlhf', 'choice': 'a'})
        is an answer given to every new item in the same transaction: an import interrupted anywhere leaves
        the store as it was, never items without their labels. Returns the items that were new.
        """
        items = [_checked_gold(item) for item in items]
        now = time.time()
        with self._write() as conn:
            known = dict(conn.execute(select(items_table.c.item_id, items_table.c.gold).where(
                items_table.c.project == self.project)).all())
            new = []
            for item in items:
                if item.item_id not in known:
                    known[item.item_id] = item.gold
                    new.append(item)
                elif item.gold is not None and item.gold != known[item.item_id]:
                    raise ValueError(f"item {item.item_id!r} is stored with gold {known[item.item_id]!r}, not "
                                     f"{item.gold!r}; a stored item's gold never changes (its answers were scored "
                                     "against it). Give the calibration item its own item_id. Nothing was written")
            if new:
                conn.execute(insert(items_table), [_fits(items_table, {
                    "item_id": i.item_id, "project": self.project, "prompt": prompt_text(i.prompt),
                    "conversation": i.prompt.messages() if isinstance(i.prompt, Conversation) else None,
                    "responses": list(i.responses), "sources": list(i.sources), "gold": i.gold,
                    "meta": i.meta or None, "created_at": now}) for i in new])
                positions = {}
                for chunk in _chunks([i.item_id for i in new]):
                    positions.update(conn.execute(select(items_table.c.item_id, items_table.c.id).where(
                        items_table.c.project == self.project, items_table.c.item_id.in_(chunk))).all())
                conn.execute(insert(coverage_table), [
                    {"project": self.project, "item_id": i.item_id, "position": positions[i.item_id],
                     "gold": i.gold is not None, "labels": 0, "answers": 0} for i in new])
                self._after_bulk_write(conn, len(new), items_table, coverage_table)
                if label is not None:
                    try:
                        self._append(conn, self._event_rows([{**label, "item_id": i.item_id} for i in new]),
                                     items_are_new=True)
                    except BaseException:  # the items roll back with their labels: forget them here too
                        for i in new:
                            self._responses.pop(i.item_id, None)
                        raise
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

    # -- statements ---------------------------------------------------------------------------------

    def _built(self, key, build):
        """The statement `build()` makes, made once per store and kept under `key`: a click then spends its CPU
        on binding values, not on building SQL (about half of a round trip's client time when rebuilt each time)."""
        if key not in self._statements:
            self._statements[key] = build()
        return self._statements[key]

    def _insert(self, table: Table):
        """An INSERT with the database's ON CONFLICT clauses."""
        return (sqlite_insert if self.is_sqlite else postgresql_insert)(table)

    def _upsert(self, conn: Connection, table: Table, rows: list[dict], changing: tuple[str, ...],
                newer_only: bool = False):
        """Insert `rows` into `table`; a row whose (project, item_id, annotator) is there already has its
        `changing` columns set instead (with `newer_only`, only by a row of a higher `event_row`)."""
        def build():
            upsert = self._insert(table)
            return upsert.on_conflict_do_update(
                index_elements=["project", "item_id", "annotator"], set_={k: upsert.excluded[k] for k in changing},
                where=table.c.event_row < upsert.excluded.event_row if newer_only else None)
        conn.execute(self._built(("upsert", table.name, changing, newer_only), build), rows)

    def _after_bulk_write(self, conn: Connection, rows: int, *tables: Table):
        """On Postgres, after a write of BULK_ROWS rows or more, refresh the planner's statistics of `tables` (ANALYZE,
        inside the write's transaction). Without it the planner learns of the rows only at autovacuum's next pass,
        a minute or so later: measured after filling 100,000 labels, a click took 118-209 ms instead of 8 until then.
        A login that does not own the tables (the annotator role) gets a warning from Postgres and nothing else."""
        if rows >= BULK_ROWS and not self.is_sqlite:
            conn.exec_driver_sql(f"ANALYZE {', '.join(table.name for table in tables)}")


class _WriteTransaction:
    """`with store._write() as conn:` - BEGIN IMMEDIATE on SQLite; on Postgres, optionally the project's advisory lock
    and an asynchronous commit."""

    def __init__(self, store: LabelStore, serialise: bool, durable: bool):
        self.store, self.serialise, self.durable = store, serialise, durable

    def __enter__(self) -> Connection:
        self._context = self.store.engine.begin()
        conn = self._context.__enter__()
        if not self.store.is_sqlite and (self.serialise or not self.durable):
            conn.execute(self.store._built(("begin", self.serialise, self.durable), self._settings))
        return conn

    def _settings(self):
        """One statement for both settings: each costs a round trip to the server."""
        settings = [func.set_config("synchronous_commit", "off", True)] if not self.durable else []
        if self.serialise:
            settings.append(func.pg_advisory_xact_lock(zlib.crc32(self.store.project.encode())))
        return select(*settings)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def _checked_gold(item: Item) -> Item:
    """Refuse a gold answer no annotator could ever give: `gold="A"` would fail everyone's qualification."""
    k, gold = len(item.responses), item.gold
    if gold is None:
        return item
    allowed = RATINGS if k == 1 else CHOICES if k == 2 else None
    if allowed is not None and gold not in allowed:
        raise ValueError(f"item {item.item_id!r}: gold must be one of {allowed} for {k} response(s), not {gold!r}")
    if allowed is None and not (isinstance(gold, (list, tuple)) and len(gold) == k
                                and all(isinstance(r, int) and 1 <= r <= k for r in gold)):
        raise ValueError(f"item {item.item_id!r}: gold of a ranking is one rank per response, 1 (best) to {k}, "
                         f"not {gold!r}")
    return item
