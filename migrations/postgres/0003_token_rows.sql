-- Blind-index tokens cost one B-tree entry each, and a Patient has over a hundred of them: that
-- entry is most of the price of a write. Each token row now has one index, led by the token
-- (random bytes: a comparison stops at the first column, without a collation), instead of two
-- led by the tenant. A resource's own tokens, needed to remove them when it changes, are kept
-- together in one row of `search_token_sets` (16 bytes each, concatenated). Same tables and
-- columns as migrations/sqlite (where the token index is the token table itself).
--
-- Identifiers compare byte by byte ("C"): the database's default collation may be a locale's,
-- slower to compare and ordering ids differently from SQLite.

CREATE TABLE search_token_sets (
    tenant        TEXT COLLATE "C" NOT NULL,
    resource_type TEXT COLLATE "C" NOT NULL,
    resource_id   TEXT COLLATE "C" NOT NULL,
    tokens        BYTEA NOT NULL,
    PRIMARY KEY (tenant, resource_type, resource_id)
);
INSERT INTO search_token_sets
    SELECT tenant, resource_type, resource_id, string_agg(token, ''::bytea)
    FROM search_tokens GROUP BY tenant, resource_type, resource_id;

DROP INDEX search_tokens_by_token;
DROP INDEX search_tokens_by_resource;
ALTER TABLE search_tokens
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C";
CREATE INDEX search_tokens_by_token ON search_tokens (token, tenant, resource_type, resource_id);

ALTER TABLE resources
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C";
ALTER TABLE resource_versions
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C";
ALTER TABLE search_dates
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_numbers
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C";
ALTER TABLE search_refs
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C",
    ALTER COLUMN param TYPE TEXT COLLATE "C",
    ALTER COLUMN target_type TYPE TEXT COLLATE "C",
    ALTER COLUMN target_id TYPE TEXT COLLATE "C";
