-- The tree's stored hashes move from one row each to runs: one row holds up to 64 consecutive
-- stored hashes of a log (`idx` is the index of the first; `hashes` is them end to end, 32
-- bytes each). A sealing pass adds about two stored hashes per entry, and writing them as
-- rows of their own (two index entries each) cost about as much of the database's time as
-- writing the entries; as runs, a pass of 5,000 entries writes about 160 rows instead of
-- 10,000. A run is never extended: the next pass starts a new one, so the log stays append-only.
--
-- 64 hashes (2 KB) keep a row on its page: PLAIN storage neither compresses the hashes (they
-- do not compress) nor moves them out of line.
CREATE TABLE audit_hash_runs (
    tenant TEXT   NOT NULL,
    idx    BIGINT NOT NULL,
    hashes BYTEA  NOT NULL CHECK (octet_length(hashes) BETWEEN 32 AND 2048 AND octet_length(hashes) % 32 = 0),
    PRIMARY KEY (tenant, idx)
);
ALTER TABLE audit_hash_runs ALTER COLUMN hashes SET STORAGE PLAIN;

-- The hashes already stored become runs of one; the copy is the only statement that ever reads
-- the old table whole, and the verifier would report any hash it changed. Dropping the old
-- table fires no trigger.
INSERT INTO audit_hash_runs (tenant, idx, hashes) SELECT tenant, idx, hash FROM audit_hashes ORDER BY tenant, idx;
DROP TABLE audit_hashes;

CREATE TRIGGER audit_hash_runs_no_change BEFORE UPDATE OR DELETE ON audit_hash_runs
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_hash_runs_no_truncate BEFORE TRUNCATE ON audit_hash_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_hash_runs FROM PUBLIC, CURRENT_USER;
