-- SQLite moves its sealed entries to a rowid table in this version (large rows in a WITHOUT
-- ROWID table spill into overflow pages). PostgreSQL's heap tables already keep a row in one
-- place; what costs here is compression. A sealed AuditEvent (about 2.2 KB) is just above the
-- size at which PostgreSQL compresses a row's values, and its default method, pglz, took about
-- a quarter of the database's CPU in a sealing pass. lz4 compresses such JSON about as well
-- for a fraction of the CPU. A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE audit_log ALTER COLUMN event SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available: audit events stay compressed with pglz';
END
$$;
