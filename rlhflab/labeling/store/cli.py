"""A team's label store, set up from the command line: the SQL of a Postgres login that can add labels but never
change or delete one (`annotator_role_sql`), and the `rlhflab` command that prints it."""

from __future__ import annotations

import argparse
import re

__all__ = ["annotator_role_sql", "main"]


def annotator_role_sql(database: str, role: str = "annotator") -> str:
    """SQL, for the database owner to run once, that creates a Postgres login for annotators which can add
    items and labels, take and renew leases, and read everything, but can never change or delete a stored label.

    The tables of current state (`in_force`, `coverage`, `open_leases`) are writable, since every write keeps
    them in step; they hold nothing that `LabelStore` cannot rebuild from the log but live leases.
    The owner opens the store once
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
