-- The tamper-evident audit log. `audit_records` becomes the inbox: requests append to it (in
-- the same transaction as their change, or before a read answers) and the sealer moves its
-- records, in order, into `audit_log`, one tree per tenant (`_server` for requests that named
-- no known tenant). The sealer alone deletes from the inbox, and only what it has just copied
-- into the log in the same transaction; records still cannot be changed there.
DROP TRIGGER audit_records_no_delete;

-- One row per sealed entry: `event` is the AuditEvent exactly as hashed into the tree (leaf
-- `idx`); the other columns are copies of its fields for the auditor's searches.
CREATE TABLE audit_log (
    tenant      TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    outcome     INTEGER NOT NULL,
    agent       TEXT,
    patient     TEXT,
    entity      TEXT,
    event       BLOB    NOT NULL,
    PRIMARY KEY (tenant, idx)
) WITHOUT ROWID;
CREATE INDEX audit_log_by_time ON audit_log (tenant, recorded_at);
CREATE INDEX audit_log_by_patient ON audit_log (tenant, patient) WHERE patient IS NOT NULL;
CREATE INDEX audit_log_by_agent ON audit_log (tenant, agent) WHERE agent IS NOT NULL;
CREATE INDEX audit_log_by_entity ON audit_log (tenant, entity) WHERE entity IS NOT NULL;

-- The Merkle tree's stored hashes (RFC 6962 nodes of complete subtrees, in the dense order of
-- Crosby and Wallach that Go's sumdb/tlog uses): leaf hashes and the interior nodes above them.
CREATE TABLE audit_hashes (
    tenant TEXT    NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB    NOT NULL,
    PRIMARY KEY (tenant, idx)
) WITHOUT ROWID;

-- Signed checkpoints (C2SP tlog-checkpoint in a signed note), one per tree size signed.
CREATE TABLE audit_checkpoints (
    tenant     TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    note       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, size)
) WITHOUT ROWID;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_hashes_no_update BEFORE UPDATE ON audit_hashes
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_hashes_no_delete BEFORE DELETE ON audit_hashes
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
