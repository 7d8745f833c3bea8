-- Nothing changes on SQLite: PostgreSQL's migration 0004 moves its token rows into arrays under
-- a GIN index, which SQLite does not have. Its token table is already one B-tree keyed by the
-- token (migration 0003), the cheapest it can be. This file keeps the two version lists equal.
SELECT 1;
