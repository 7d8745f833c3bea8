-- PostgreSQL takes UPDATE, DELETE and TRUNCATE on the audit log away from the server's own role
-- in this version. SQLite has no roles: its triggers (0005) are the database's refusal.
SELECT 1;
