-- SQLite moves its sealed entries to a rowid table in this version (large rows in a WITHOUT
-- ROWID table spill into overflow pages). PostgreSQL's heap tables already keep a row in one
-- place: nothing changes here.
SELECT 1;
