-- The sealed entries move to a rowid table. `audit_log` was WITHOUT ROWID, which SQLite keeps
-- in an index b-tree whose cells spill anything above about 1 KB into overflow pages: every
-- AuditEvent (about 2 KB) cost an overflow chain to write and to read back. In a rowid table
-- an entry is one cell on a leaf page, sealing appends at the end of the table, and
-- `(tenant, idx)` is a small unique index beside it. Same columns, same rows, same order.
--
-- The copy is the only statement that ever reads the old table whole; the verifier would
-- report any entry it changed. Dropping the old table takes its triggers and indexes with it
-- (no DELETE trigger fires); they are created again below on the new one.
CREATE TABLE audit_log_entries (
    tenant      TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    outcome     INTEGER NOT NULL,
    agent       TEXT,
    patient     TEXT,
    entity      TEXT,
    event       BLOB    NOT NULL,
    UNIQUE (tenant, idx)
);
INSERT INTO audit_log_entries (tenant, idx, recorded_at, action, outcome, agent, patient, entity, event)
    SELECT tenant, idx, recorded_at, action, outcome, agent, patient, entity, event FROM audit_log ORDER BY tenant, idx;
DROP TABLE audit_log;
ALTER TABLE audit_log_entries RENAME TO audit_log;

CREATE INDEX audit_log_by_time ON audit_log (tenant, recorded_at);
CREATE INDEX audit_log_by_patient ON audit_log (tenant, patient) WHERE patient IS NOT NULL;
CREATE INDEX audit_log_by_agent ON audit_log (tenant, agent) WHERE agent IS NOT NULL;
CREATE INDEX audit_log_by_entity ON audit_log (tenant, entity) WHERE entity IS NOT NULL;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
