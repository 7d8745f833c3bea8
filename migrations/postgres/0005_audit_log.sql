-- The tamper-evident audit log. `audit_records` becomes the inbox: requests append to it (in
-- the same transaction as their change, or before a read answers) and the sealer moves its
-- records, in order, into `audit_log`, one tree per tenant (`_server` for requests that named
-- no known tenant). The sealer alone deletes from the inbox, and only what it has just copied
-- into the log in the same transaction: it says so for that transaction only
-- (`set_config('fhirvault.sealer', 'on', true)`), and any other DELETE is refused. Records
-- still cannot be changed there, nor truncated.
CREATE FUNCTION audit_records_sealer_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('fhirvault.sealer', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'audit records are append-only (only the sealer moves them into the log)';
    END IF;
    RETURN OLD;
END;
$$;

DROP TRIGGER audit_records_no_update ON audit_records;
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_sealer_only BEFORE DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_sealer_only();

-- One row per sealed entry: `event` is the AuditEvent exactly as hashed into the tree (leaf
-- `idx`); the other columns are copies of its fields for the auditor's searches.
CREATE TABLE audit_log (
    tenant      TEXT     NOT NULL,
    idx         BIGINT   NOT NULL,
    recorded_at BIGINT   NOT NULL,
    action      TEXT     NOT NULL,
    outcome     BIGINT   NOT NULL,
    agent       TEXT,
    patient     TEXT,
    entity      TEXT,
    event       BYTEA    NOT NULL,
    PRIMARY KEY (tenant, idx)
);
CREATE INDEX audit_log_by_time ON audit_log (tenant, recorded_at);
CREATE INDEX audit_log_by_patient ON audit_log (tenant, patient) WHERE patient IS NOT NULL;
CREATE INDEX audit_log_by_agent ON audit_log (tenant, agent) WHERE agent IS NOT NULL;
CREATE INDEX audit_log_by_entity ON audit_log (tenant, entity) WHERE entity IS NOT NULL;

-- The Merkle tree's stored hashes (RFC 6962 nodes of complete subtrees, in the dense order of
-- Crosby and Wallach that Go's sumdb/tlog uses): leaf hashes and the interior nodes above them.
CREATE TABLE audit_hashes (
    tenant TEXT   NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA  NOT NULL,
    PRIMARY KEY (tenant, idx)
);

-- Signed checkpoints (C2SP tlog-checkpoint in a signed note), one per tree size signed.
CREATE TABLE audit_checkpoints (
    tenant     TEXT   NOT NULL,
    size       BIGINT NOT NULL,
    note       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, size)
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_hashes_no_change BEFORE UPDATE OR DELETE ON audit_hashes
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_hashes_no_truncate BEFORE TRUNCATE ON audit_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
