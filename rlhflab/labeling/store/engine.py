"""Where a label store lives: the SQLAlchemy engine for a path or a URL (SQLite in WAL mode with immediate write
locks, or Postgres with connect and statement timeouts), the refusal of a file that is not a label store, and the
file system under a SQLite file: a warning on a network file system, a rollback journal in a synced folder."""

from __future__ import annotations

import sqlite3
import warnings
from contextlib import closing
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

from .schema import StoreConfig

__all__ = ["engine_for", "MOUNTS", "NetworkFilesystemWarning", "filesystem_of"]


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
