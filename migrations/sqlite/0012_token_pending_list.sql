-- Nothing changes on SQLite: PostgreSQL's migration 0012 tunes its GIN token index, which SQLite
-- does not have. This file keeps the two version lists equal.
SELECT 1;
