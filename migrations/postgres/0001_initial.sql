-- The index of resource versions, the wrapped tenant keys and the audit records.
-- Nothing here is health data: ids are opaque, timestamps are milliseconds since the epoch (UTC),
-- objects hold the sealed resources. Same tables, columns and constraints as migrations/sqlite;
-- every integer is BIGINT so both databases read back the same Rust types.

CREATE TABLE resource_versions (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        TEXT   NOT NULL,
    resource_type TEXT   NOT NULL,
    resource_id   TEXT   NOT NULL,
    version       BIGINT NOT NULL CHECK (version > 0),
    method        TEXT   NOT NULL CHECK (method IN ('create', 'update', 'delete')),
    object_key    TEXT   UNIQUE,
    location      TEXT   NOT NULL,
    compartment   TEXT   NOT NULL,
    last_updated  BIGINT NOT NULL,
    CHECK ((method = 'delete') = (object_key IS NULL)),
    UNIQUE (tenant, resource_type, resource_id, version)
);

CREATE INDEX resource_versions_by_type ON resource_versions (tenant, resource_type, seq);

CREATE TABLE resources (
    tenant          TEXT   NOT NULL,
    resource_type   TEXT   NOT NULL,
    resource_id     TEXT   NOT NULL,
    current_version BIGINT NOT NULL,
    PRIMARY KEY (tenant, resource_type, resource_id)
);

-- Compartment keys and MAC keys, wrapped by the tenant KEK (never stored in clear).
CREATE TABLE tenant_keys (
    tenant      TEXT   NOT NULL,
    key_ref     TEXT   NOT NULL,
    kek_version BIGINT NOT NULL,
    wrapped     BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, key_ref)
);

CREATE TABLE audit_records (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at        BIGINT NOT NULL,
    request_id         TEXT   NOT NULL,
    tenant             TEXT,
    agent_subject      TEXT,
    agent_issuer       TEXT,
    agent_role         TEXT,
    agent_jurisdiction TEXT,
    purpose            TEXT,
    token_id           TEXT,
    source_ip          TEXT,
    action             TEXT   NOT NULL,
    resource_type      TEXT,
    resource_id        TEXT,
    version            BIGINT,
    compartment        TEXT,
    outcome            BIGINT NOT NULL,
    detail             TEXT,
    policy             TEXT
);

-- The audit trail is append-only: the database itself refuses to change or remove a record,
-- including by TRUNCATE (which skips row triggers).
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only';
END;
$$;

CREATE TRIGGER audit_records_no_update BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();

CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
