-- The index of resource versions, the wrapped tenant keys and the audit records.
-- Nothing here is health data: ids are opaque, timestamps are milliseconds since the epoch (UTC),
-- objects hold the sealed resources.

CREATE TABLE resource_versions (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version > 0),
    method        TEXT    NOT NULL CHECK (method IN ('create', 'update', 'delete')),
    object_key    TEXT    UNIQUE,
    location      TEXT    NOT NULL,
    compartment   TEXT    NOT NULL,
    last_updated  INTEGER NOT NULL,
    CHECK ((method = 'delete') = (object_key IS NULL)),
    UNIQUE (tenant, resource_type, resource_id, version)
);

CREATE INDEX resource_versions_by_type ON resource_versions (tenant, resource_type, seq);

CREATE TABLE resources (
    tenant          TEXT    NOT NULL,
    resource_type   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    current_version INTEGER NOT NULL,
    PRIMARY KEY (tenant, resource_type, resource_id)
) WITHOUT ROWID;

-- Compartment keys and MAC keys, wrapped by the tenant KEK (never stored in clear).
CREATE TABLE tenant_keys (
    tenant      TEXT    NOT NULL,
    key_ref     TEXT    NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key_ref)
) WITHOUT ROWID;

CREATE TABLE audit_records (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at        INTEGER NOT NULL,
    request_id         TEXT    NOT NULL,
    tenant             TEXT,
    agent_subject      TEXT,
    agent_issuer       TEXT,
    agent_role         TEXT,
    agent_jurisdiction TEXT,
    purpose            TEXT,
    token_id           TEXT,
    source_ip          TEXT,
    action             TEXT    NOT NULL,
    resource_type      TEXT,
    resource_id        TEXT,
    version            INTEGER,
    compartment        TEXT,
    outcome            INTEGER NOT NULL,
    detail             TEXT,
    policy             TEXT
);

-- The audit trail is append-only: the database itself refuses to change or remove a record.
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
