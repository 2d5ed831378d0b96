"""Local SQLite schema, upgraded in order; `PRAGMA user_version` records the step reached."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: change journal, config versions, schemas, audit chain.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE changes (
        seq          INTEGER PRIMARY KEY,
        entity       TEXT NOT NULL,
        key          TEXT NOT NULL,
        op           TEXT NOT NULL,
        actor        TEXT NOT NULL,
        at           TEXT NOT NULL,
        origin       TEXT NOT NULL,
        request_id   TEXT NOT NULL DEFAULT '',
        upstream_seq INTEGER UNIQUE,
        payload      BLOB NOT NULL
    );
    CREATE TABLE config_versions (
        service     TEXT NOT NULL,
        environment TEXT NOT NULL,
        version     INTEGER NOT NULL,
        change_seq  INTEGER NOT NULL,
        record      BLOB NOT NULL,
        PRIMARY KEY (service, environment, version)
    ) WITHOUT ROWID;
    CREATE TABLE config_schemas (
        service TEXT PRIMARY KEY,
        record  BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE audit_log (
        id         INTEGER PRIMARY KEY,
        at         TEXT NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        target     TEXT NOT NULL,
        details    TEXT NOT NULL,
        request_id TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE INDEX audit_log_target ON audit_log (target, id);
    """,
    # 2: feature flags (every version kept) and evaluation counts per hour.
    """
    CREATE TABLE flag_versions (
        key        TEXT NOT NULL,
        version    INTEGER NOT NULL,
        change_seq INTEGER NOT NULL,
        record     BLOB NOT NULL,
        PRIMARY KEY (key, version)
    ) WITHOUT ROWID;
    CREATE TABLE flag_analytics (
        flag    TEXT NOT NULL,
        hour    INTEGER NOT NULL,
        variant TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        reason  TEXT NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (flag, hour, variant, enabled, reason)
    ) WITHOUT ROWID;
    """,
]

LATEST = len(MIGRATIONS)
