"""The artifacts database: repositories, repository tokens, events, tombstones."""

from __future__ import annotations

import sqlite3

from edgenode.store import Migration


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE repos (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            fork_of TEXT,
            default_branch TEXT NOT NULL DEFAULT 'main',
            PRIMARY KEY (tenant, name)
        )"""
    )
    # A deleted repository leaves a tombstone so gossip does not bring it back.
    conn.execute(
        """CREATE TABLE repo_tombstones (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            deleted_at REAL NOT NULL,
            PRIMARY KEY (tenant, name)
        )"""
    )
    conn.execute(
        """CREATE TABLE repo_tokens (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            repo TEXT NOT NULL,
            hash TEXT NOT NULL,
            access TEXT NOT NULL CHECK (access IN ('read', 'write')),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL,
            last_used_at REAL
        )"""
    )
    conn.execute("CREATE INDEX repo_tokens_repo ON repo_tokens(tenant, repo)")
    conn.execute(
        """CREATE TABLE repo_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL,
            repo TEXT NOT NULL,
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    conn.execute("CREATE INDEX repo_events_repo ON repo_events(tenant, repo, id)")


def _create_ref_tombstones(conn: sqlite3.Connection) -> None:
    # A branch or tag deleted anywhere in the fleet: no peer's older state of it brings it back.
    conn.execute(
        """CREATE TABLE ref_tombstones (
            tenant TEXT NOT NULL,
            repo TEXT NOT NULL,
            ref TEXT NOT NULL,
            sha TEXT NOT NULL,
            deleted_at REAL NOT NULL,
            PRIMARY KEY (tenant, repo, ref)
        ) WITHOUT ROWID"""
    )


MIGRATIONS = [Migration("artifacts-0001-repos-tokens-events", _create_tables),
              Migration("artifacts-0002-ref-tombstones", _create_ref_tombstones)]
