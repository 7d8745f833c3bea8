-- A token row cost PostgreSQL a heap tuple and a B-tree entry that repeated the tenant, type
-- and id: a hundred of each for a Patient, most of the price of a write. A resource's tokens
-- are now one array in its row of `search_token_sets`, under a GIN index: one heap tuple per
-- resource, and one small entry (the token and the row's address) per token. The index is
-- written at once (`fastupdate = off`): a pending list would make every search scan it.
-- Searches check tenant and type on the row (tokens are keyed per tenant and name the type;
-- see migration 0002). SQLite keeps its token table (its migration 0004 changes nothing).

-- The tokens of a concatenated token set (16 bytes each), as an array.
CREATE FUNCTION fhirvault_token_array(set BYTEA) RETURNS BYTEA[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT substring(set FROM i * 16 + 1 FOR 16) FROM generate_series(0, length(set) / 16 - 1) AS i)
$$;

ALTER TABLE search_token_sets ALTER COLUMN tokens TYPE BYTEA[] USING fhirvault_token_array(tokens);
CREATE INDEX search_token_sets_by_token ON search_token_sets USING gin (tokens) WITH (fastupdate = off);
DROP TABLE search_tokens;
