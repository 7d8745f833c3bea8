-- PostgreSQL checks, once per DELETE statement instead of once per row, that only the sealer
-- deletes from the audit inbox. SQLite has no such guard to move (its sealer holds the write
-- lock, and SQLite has no per-transaction setting to check): nothing changes here. The version
-- exists so that both databases keep the same list of migrations.
SELECT 1;
