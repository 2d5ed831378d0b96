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
    # 3: encrypted secrets and their data keys; plaintext secrets of earlier
    # versions are scrubbed from config versions and the journal.
    """
    CREATE TABLE data_keys (
        id     TEXT PRIMARY KEY,
        record BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE secret_versions (
        service     TEXT NOT NULL,
        environment TEXT NOT NULL,
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        change_seq  INTEGER NOT NULL,
        key_id      TEXT NOT NULL,
        nonce       BLOB,
        ciphertext  BLOB,
        description TEXT NOT NULL,
        expires_at  REAL,
        created_at  TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        destroyed   TEXT,
        PRIMARY KEY (service, environment, name, version)
    ) WITHOUT ROWID;
    CREATE INDEX secret_versions_key ON secret_versions (key_id)
        WHERE ciphertext IS NOT NULL;
    CREATE INDEX secret_versions_expiry ON secret_versions (expires_at)
        WHERE ciphertext IS NOT NULL AND expires_at IS NOT NULL;
    CREATE TABLE secret_access (
        service     TEXT NOT NULL,
        environment TEXT NOT NULL,
        name        TEXT NOT NULL,
        count       INTEGER NOT NULL,
        last_at     TEXT NOT NULL,
        PRIMARY KEY (service, environment, name)
    ) WITHOUT ROWID;
    UPDATE config_versions SET record = json_remove(CAST(record AS TEXT), '$.secrets')
        WHERE json_extract(CAST(record AS TEXT), '$.secrets') IS NOT NULL;
    UPDATE changes SET payload = json_remove(CAST(payload AS TEXT), '$.payload.secrets')
        WHERE entity = 'config'
          AND json_extract(CAST(payload AS TEXT), '$.payload.secrets') IS NOT NULL;
    """,
    # 4: the service registry.
    """
    CREATE TABLE services (
        name   TEXT PRIMARY KEY,
        record BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # 5: secret reads recorded on this host and not yet committed as `SecretRead`
    # changes (an outbox: reads never wait for the upstream; see SecretService).
    """
    CREATE TABLE secret_reads (
        id          TEXT PRIMARY KEY,
        at          TEXT NOT NULL,
        actor       TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        peer        TEXT NOT NULL,
        service     TEXT NOT NULL,
        environment TEXT NOT NULL,
        names       TEXT NOT NULL
    );
    """,
    # 6: which journal rows hold a copy of a secret version's ciphertext, so destroying
    # the version can redact every copy (fpcd.domain.shred). The redaction of what was
    # destroyed before this step runs in Python right after it (store.sqlite.migrate).
    """
    CREATE TABLE secret_copies (
        service     TEXT NOT NULL,
        environment TEXT NOT NULL,
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        key_id      TEXT NOT NULL,
        PRIMARY KEY (service, environment, name, version, seq)
    ) WITHOUT ROWID;
    CREATE INDEX secret_copies_key ON secret_copies (key_id);
    INSERT OR IGNORE INTO secret_copies (service, environment, name, version, seq, key_id)
        SELECT json_extract(CAST(payload AS TEXT), '$.payload.service'),
               json_extract(CAST(payload AS TEXT), '$.payload.environment'),
               json_extract(CAST(payload AS TEXT), '$.payload.name'),
               json_extract(CAST(payload AS TEXT), '$.payload.version'), seq,
               json_extract(CAST(payload AS TEXT), '$.payload.key_id')
        FROM changes WHERE entity = 'secret';
    INSERT OR IGNORE INTO secret_copies (service, environment, name, version, seq, key_id)
        SELECT json_extract(j.value, '$.service'), json_extract(j.value, '$.environment'),
               json_extract(j.value, '$.name'), json_extract(j.value, '$.version'), c.seq,
               json_extract(CAST(c.payload AS TEXT), '$.payload.key_id')
        FROM changes c, json_each(CAST(c.payload AS TEXT), '$.payload.items') j
        WHERE c.entity = 'secret_rewrap';
    """,
]

#: The step that introduced redaction: stores older than it are scrubbed once.
REDACTION_STEP = 6

LATEST = len(MIGRATIONS)
