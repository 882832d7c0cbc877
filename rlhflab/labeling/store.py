"""LabelStore: every label ever given, as an append-only event log on SQLAlchemy Core.

One SQLite file (WAL mode, fsync on every commit) holds a project on a laptop or a shared
JupyterHub disk; a Postgres URL lets annotators on separate machines (Colab) label together.

Two tables, both insert-only:

    items    what can be labeled: a prompt and K responses (K = 2 for pairs, 1 for a reply to rate
             up or down), the policy that wrote each response, and optionally a gold answer for
             calibration items
    events   one row per action: label (a choice, a ranking or a rating), skip, flag_prompt (a bad
             prompt), undo, and decide (a reviewer's verdict on an item the annotators disagree on;
             see `rlhflab.labeling.exports.adjudication_queue`)

Nothing in them is updated in place or deleted. An edit is a new label for the same item; an undo is
an event naming the event it cancels. The current view (`labels()`) is derived by folding the log, so
every state the project ever had can be reconstructed. `record` returns only after the commit, so a
label is durable before the widget shows the next item.

Three more tables hold state that is not part of the record, kept in step inside every write
transaction, so that a click reads a few indexed rows instead of replaying the whole log (`next_item`,
`progress`, `recent`):

    in_force     (item, annotator) -> the event in force: that annotator's answer on that item
    coverage     per item: its queue position, whether it is gold, how many annotators have an answer
                 in force on it, and how many of those answers are labels
    open_leases  "annotator X is looking at item Y until time T", so that an abandoned item goes back
                 to the queue when its lease runs out; the row goes when X answers Y

The first two are rebuilt from the log when a store written before them, or before one of their
columns, is opened; a lease lost in an upgrade only lets its item be handed out once more.

Assignment: each item should get `overlap` annotators. `next_item` hands an annotator the oldest item
they have not labeled whose labels plus live leases by others are fewer than `overlap`; gold items
go to everyone, which is what makes per-annotator accuracy on them meaningful. With `gold_rate` they
are mixed in among the real items at that rate, wherever they sit in the queue; with `qualification`
an annotator first labels that many gold items and gets real ones only with enough of them right.

Every event keeps when its item went on screen (`shown_at`), so the log holds the time per label, and
the version of the guidelines the annotator was shown. Annotator names are normalised (`annotator_name`).
For a team, `annotator_role_sql` (`python -m rlhflab.labeling.store annotator-role`) prints the SQL for a Postgres
login that can add labels but never change or delete one; a SQLite file on a network file system warns.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sqlite3
import time
import unicodedata
import uuid
import warnings
import zlib
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (JSON, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        bindparam, create_engine, delete, event, func, insert, inspect, literal, select, union_all,
                        update)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateColumn

from .records import Conversation, Item, prompt_text

__all__ = ["CHOICES", "RATINGS", "STRENGTHS", "BULK_ROWS", "SCHEMA_LOCK", "StoreConfig", "metadata",
           "events_table", "leases_table", "in_force_table", "coverage_table", "engine_for", "MOUNTS",
           "NetworkFilesystemWarning", "filesystem_of", "LabelStore", "ANNOTATOR", "StoreSnapshot",
           "matches_gold", "QualificationFailed", "annotator_name", "annotator_role_sql", "main"]

UNPREDICTABLE = secrets.SystemRandom()  # the gold schedule's draws
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


def engine_for(url_or_path: str | Path, config: StoreConfig) -> Engine:
    """A SQLAlchemy engine: a path means a SQLite file (WAL, immediate write locks); else a URL (text, or
    SQLAlchemy's own)."""
    # str() of a SQLAlchemy URL hides its password ('***'), and the login would then fail
    url = url_or_path.render_as_string(hide_password=False) if isinstance(url_or_path, URL) else str(url_or_path)
    given_a_path = "://" not in url
    if given_a_path:
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(url).expanduser()}"
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver the lab ships
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql"):  # an unreachable server or a stuck statement fails, and is retried once
        return create_engine(url, pool_pre_ping=True, connect_args={
            "connect_timeout": max(1, round(config.connect_timeout_s)),
            "options": f"-c statement_timeout={round(config.statement_timeout_s * 1000)}"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError("an in-memory SQLite store loses every label when the kernel stops; "
                         "pass a file path such as 'labels.db'")
    path = Path(make_url(url).database).expanduser()
    refuse_foreign_file(path)
    filesystem = filesystem_of(path.parent)
    if given_a_path:
        warn_if_networked(path, filesystem)
    # WAL keeps committed labels in a -wal file until a checkpoint; a folder synced in the background (Colab's
    # Google Drive) may upload the database without them. A rollback journal writes each commit into the file.
    journal = "DELETE" if filesystem in SYNCED_FOLDERS else "WAL"
    engine = create_engine(url, connect_args={"timeout": config.busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA journal_mode={journal}")  # WAL: readers never block the writer, and vice versa
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


APPLICATION_ID = int.from_bytes(b"RLHF", "big")  # SQLite's header field naming the program whose file it is
STORE_TABLES = {"items", "events"}


def refuse_foreign_file(path: Path) -> None:
    """Refuse a file that is not a label store before anything writes to it (WAL mode, new tables): another
    program's database, a damaged one, or something that is not SQLite at all. A new or empty file is fine."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise ValueError(f"{path} is not a SQLite database (it starts with {header!r}); give the path of a label "
                         "store, or a new file name")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            owner = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} cannot be read as a label store ({error}); restore it from a backup "
                         "(LabelStore.backup makes one) or give a new file name") from None
    foreign = owner not in (0, APPLICATION_ID) or (tables and not STORE_TABLES <= tables) or (
        "items" in tables and not {"item_id", "project", "prompt", "responses"} <= columns)
    if foreign:
        raise ValueError(f"{path} is another program's database (tables: {', '.join(sorted(tables))}), not a "
                         "label store; nothing was changed. Give a new file name for the labels")


# SQLite's locks rely on the file system's; these get them wrong, and a store on them can lose or corrupt labels
# when two machines write (https://www.sqlite.org/useovernet.html).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "fuse.sshfs",
                       "fuse.gcsfuse", "fuse.s3fs")
SYNCED_FOLDERS = ("fuse.drive",)  # Colab's Google Drive: one machine writes, and uploads follow in the background
MOUNTS = Path("/proc/mounts")


class NetworkFilesystemWarning(UserWarning):
    """A SQLite store sits on a network file system."""


def filesystem_of(path: Path, mounts: Path | None = None) -> str | None:
    """The type of the file system holding `path` (its longest mount point), from /proc/mounts; None
    where that file is missing (not Linux)."""
    try:
        table = [line.split()[1:3] for line in (mounts or MOUNTS).read_text().splitlines() if len(line.split()) >= 3]
    except OSError:
        return None
    path = str(path.resolve())
    # Mount points escape spaces as \040; the longest one that contains `path` is where it lives.
    found = [(point.replace("\\040", " "), kind) for point, kind in table]
    found = [(p, k) for p, k in found if path == p or path.startswith(p.rstrip("/") + "/")]
    return max(found, key=lambda pk: len(pk[0]))[1] if found else None


def warn_if_networked(path: Path, kind: str | None):
    """Warn when `path`, on a file system of type `kind` (`filesystem_of`), is on a network file system."""
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(f"the SQLite store {str(path)!r} sits on a network file system ({kind}), whose locks SQLite "
                      "cannot trust: labels from two machines can be lost or corrupt the file. Keep it on a local "
                      "disk that every annotator's kernel reaches (one JupyterHub server), or use a Postgres URL",
                      NetworkFilesystemWarning, stacklevel=4)


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
            if _add_missing_columns(conn, coverage_table):  # coverage.answers: every
                conn.execute(update(coverage_table).values(answers=_answers_on_item()))  # project's, not just this one's
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

    def _after_bulk_write(self, conn: Connection, rows: int, *tables: Table):
        """On Postgres, after a write of BULK_ROWS rows or more, refresh the planner's statistics of `tables` (ANALYZE,
        inside the write's transaction). Without it the planner learns of the rows only at autovacuum's next pass,
        a minute or so later: measured after filling 100,000 labels, a click took 118-209 ms instead of 8 until then.
        A login that does not own the tables (the annotator role) gets a warning from Postgres and nothing else."""
        if rows >= BULK_ROWS and not self.is_sqlite:
            conn.exec_driver_sql(f"ANALYZE {', '.join(table.name for table in tables)}")

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
            return delete(table).where(c.project == self.project, c.item_id == bindparam("i"), c.annotator == bindparam("a"))
        conn.execute(self._built(("delete", table.name), build), pairs)

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

    def _insert(self, table: Table):
        """An INSERT with the database's ON CONFLICT clauses."""
        return (sqlite_insert if self.is_sqlite else postgresql_insert)(table)

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

    def decide(self, item_id: str, reviewer: str, *, choice: str | None = None, strength: str | None = None,
               ranking: list[int] | None = None, rationale: str | None = None, **kwargs) -> str:
        """Record a reviewer's decision on an item (one the annotators disagree on, say): a choice or a
        ranking, as a label gives. The newest decision not undone counts, whoever made it; it never
        replaces the reviewer's own label, and `exports` use it under policy="adjudicated"."""
        return self.record(item_id, reviewer, action="decide", choice=choice, strength=strength, ranking=ranking,
                           rationale=rationale, **kwargs)

    def decisions(self) -> dict[str, dict]:
        """item_id -> the decision in force on it (the newest 'decide' event not undone)."""
        return _decisions(self.events())

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
                                      {"annotator": annotator, "now": now, "exclude": sorted(exclude)}).mappings().first()
                if chosen is None and plan == QUALIFYING:
                    round_ = self._qualification(conn, annotator)
                    raise QualificationFailed(
                        f"{annotator!r} has labeled {round_['answered']} of the {round_['required']} gold items of "
                        f"the qualification round and none is left for them (skipped ones do not count): add gold "
                        f"items (Item(..., gold=...)) or lower StoreConfig.qualification")
                if chosen is not None:
                    self._upsert(conn, leases_table, [{"project": self.project, "item_id": chosen["item_id"], "annotator":
                                                       annotator, "expires_at": now + self.config.lease_seconds}],
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
        query = (select(c.item_id, c.position).join(leases_table, (c.project == lease.project) & (c.item_id == lease.item_id))
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

    def _built(self, key, build):
        """The statement `build()` makes, made once per store and kept under `key`: a click then spends its CPU
        on binding values, not on building SQL (about half of a round trip's client time when rebuilt each time)."""
        if key not in self._statements:
            self._statements[key] = build()
        return self._statements[key]

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

    def progress(self, annotator: str | None = None) -> dict:
        """Items in the queue, items nobody has answered yet, answers in force per annotator; and for
        `annotator`: their labels, skips and prompt flags in force (each counted once, as their
        latest answer on the item) and how many items are left for them (ignoring others' leases)."""
        c, f = coverage_table.c, in_force_table.c
        with self._read() as conn:
            items = conn.scalar(select(func.count()).where(c.project == self.project))
            # The `answers = 0` range of `coverage_untouched`, each item checked in `in_force`: a kernel still running an
            # older rlhflab answers without counting, and an item it answered must not look untouched, or a generation
            # queue waiting for fewer untouched items would wait for good (20 ms at 100,000 untouched items, 3.7 unchecked)
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
        return {who: {"gold_items": len(hits), "accuracy": sum(hits) / len(hits)} for who, hits in sorted(scores.items())}


# The values the assignment query binds when it runs (see `LabelStore._assignment`)
UNDO = events_table.alias("undo")  # an event that cancels the one it targets
ANNOTATOR, NOW, EXCLUDE = bindparam("annotator", type_=String), bindparam("now", type_=Float), bindparam("exclude", expanding=True)
IN_QUEUE_ORDER, QUALIFYING = (None,), (True,)  # plans (see `LabelStore._plan`): any open item; gold items only


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


def matches_gold(label, gold) -> bool:
    """Whether a label gives the gold answer: the same choice (strength aside) or the same ranks."""
    return (label["ranking"] if label.get("ranking") is not None else label["choice"]) == gold


class QualificationFailed(Exception):
    """The annotator has not passed the qualification round (`StoreConfig.qualification`), so no real
    item is served to them; the message says why and what to do."""


def annotator_name(name) -> str:
    """`name` as the store keeps it: Unicode NFC, trimmed, inner spaces collapsed, case folded, so that "Ada",
    "ada " and "ADA" (and "José" typed with a combining accent or without) are one person's labels, progress
    and accuracy; an empty name is refused."""
    folded = " ".join(unicodedata.normalize("NFC", name).split()).casefold() if isinstance(name, str) else ""
    if not folded:
        raise ValueError(f"every event needs an annotator name, not {name!r}; pass annotator='your-name' "
                         "(each person their own: labels, progress and accuracy are kept per annotator)")
    return folded


def _fold(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Replay the log: an undo cancels its target; the newest surviving answer per (item, annotator) counts.
    Decisions are no one's answer (see `LabelStore.decide`)."""
    undone = {e["target"] for e in events if e["action"] == "undo"}
    state: dict[tuple[str, str], dict] = {}
    for e in events:
        if e["action"] in ANSWERS and e["event_id"] not in undone:
            state[(e["item_id"], e["annotator"])] = e
    return state


class _WriteTransaction:
    """`with store._write() as conn:` - BEGIN IMMEDIATE on SQLite; on Postgres, optionally the project's advisory lock and an
    asynchronous commit."""

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


def _add_missing_columns(conn: Connection, table: Table) -> list[str]:
    """Add the columns of `table` that a store written by an older rlhflab lacks; returns their names. Each
    must be nullable or have a server default, since the table has rows."""
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in present]
    for column in missing:
        if not column.nullable and column.server_default is None:
            raise TypeError(f"{table.name}.{column.name} is NOT NULL without a server default, so it cannot be "
                            "added to a table that has rows")
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {CreateColumn(column).compile(dialect=conn.dialect)}")
    return [column.name for column in missing]


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
            raise ValueError(f"event {row['event_id']!r} is already stored with different content ({', '.join(differs)} "
                             f"differ: {[earlier[k] for k in differs]} stored, {[row[k] for k in differs]} sent); nothing "
                             f"was written. A retry must resend the same event; a new answer needs a new event_id")
    return new


def _as_json(value):
    """`value` as the JSON column gives it back (tuples become lists), so a retry compares equal."""
    return None if value is None else json.loads(json.dumps(value))


def _chunks(values: list, size: int = 500):
    """Pieces of `values` small enough for one IN (...) list on every database."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _item_of(row) -> Item:
    return Item(prompt=row["conversation"] or row["prompt"], responses=tuple(row["responses"]), sources=tuple(row["sources"]),
                gold=row["gold"], meta=row["meta"] or {}, item_id=row["item_id"])


# -- team set-up --------------------------------------------------------------------------------------

def annotator_role_sql(database: str, role: str = "annotator") -> str:
    """SQL, for the database owner to run once, that creates a Postgres login for annotators which can add
    items and labels, take and renew leases, and read everything, but can never change or delete a stored label.

    The tables of current state (`in_force`, `coverage`, `open_leases`) are writable, since every write keeps
    them in step; they hold nothing that `LabelStore` cannot rebuild from the log but live leases. The owner opens the store once
    (`LabelStore(url)`) first, so that the tables exist. No password is part of the SQL: the owner sets it
    in psql with `\\password <role>` and hands it over outside the notebook.
    """
    for name, value in (("database", database), ("role", role)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", value or ""):
            raise ValueError(f"{name} must be a plain Postgres name (letters, digits, _ or -), not {value!r}")
    log, derived = "items, events", "in_force, coverage, open_leases"
    return "\n".join([
        f"-- rlhflab: role {role!r} adds and reads labels in {database!r}, and can never change or delete one",
        f'CREATE ROLE "{role}" LOGIN;  -- then, in psql: \\password "{role}"',
        f'GRANT CONNECT ON DATABASE "{database}" TO "{role}";',
        f'GRANT USAGE ON SCHEMA public TO "{role}";',
        f'REVOKE ALL ON {log}, {derived} FROM "{role}";',
        f'GRANT SELECT, INSERT ON {log} TO "{role}";  -- append-only: no UPDATE, no DELETE',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON {derived} TO "{role}";  -- current state, kept in step with the log',
        f'GRANT USAGE, SELECT ON SEQUENCE items_id_seq, events_id_seq TO "{role}";',
    ]) + "\n"


def main(argv: list[str] | None = None):
    """`rlhflab annotator-role --database labels [--role annotator]` (or `python -m rlhflab.labeling.store ...`):
    print that SQL."""
    parser = argparse.ArgumentParser(prog="rlhflab", description="label store set-up")
    commands = parser.add_subparsers(dest="command", required=True)
    role = commands.add_parser("annotator-role", help="print SQL for an INSERT + SELECT-only Postgres annotator role")
    role.add_argument("--database", required=True, help="the Postgres database that holds the store")
    role.add_argument("--role", default="annotator", help="name of the role to create (default: annotator)")
    args = parser.parse_args(argv)
    print(annotator_role_sql(args.database, args.role), end="")


if __name__ == "__main__":
    main()
