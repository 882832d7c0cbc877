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

The package, by part: `label_store` (`LabelStore` itself: opening, items, transactions), `log` (appending events,
the derived tables kept in step), `views` (the log and what is in force), `queue` (assignment, leases, gold and
qualification), `schema` (the tables and `StoreConfig`), `engine` (SQLite or Postgres, file checks) and `cli` (the
`rlhflab` command).
"""

from .cli import annotator_role_sql, main
from .engine import MOUNTS, NetworkFilesystemWarning, engine_for, filesystem_of
from .label_store import LabelStore
from .queue import ANNOTATOR, QualificationFailed, matches_gold
from .schema import (BULK_ROWS, CHOICES, RATINGS, SCHEMA_LOCK, STRENGTHS, StoreConfig, annotator_name, coverage_table,
                     events_table, in_force_table, leases_table, metadata)
from .views import StoreSnapshot

# Importable from here since before the store was a package; not its API, which is `__all__`
from .engine import (APPLICATION_ID, NETWORK_FILESYSTEMS, STORE_TABLES, SYNCED_FOLDERS,  # noqa: F401
                     refuse_foreign_file, warn_if_networked)
from .log import UNDO  # noqa: F401
from .queue import EXCLUDE, IN_QUEUE_ORDER, NOW, QUALIFYING, UNPREDICTABLE  # noqa: F401
from .schema import ACTIONS, ANSWERS, CONTENT, VERDICTS, items_table  # noqa: F401

__all__ = ["CHOICES", "RATINGS", "STRENGTHS", "BULK_ROWS", "SCHEMA_LOCK", "StoreConfig", "metadata",
           "events_table", "leases_table", "in_force_table", "coverage_table", "engine_for", "MOUNTS",
           "NetworkFilesystemWarning", "filesystem_of", "LabelStore", "ANNOTATOR", "StoreSnapshot",
           "matches_gold", "QualificationFailed", "annotator_name", "annotator_role_sql", "main"]
