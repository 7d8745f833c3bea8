-- Blind-index tokens cost one B-tree entry each, and a Patient has over a hundred of them: that
-- entry is most of the price of a write. Token rows now live in one B-tree keyed by the token
-- (a table without rowid), instead of a table and two indexes. A resource's own tokens, needed
-- to remove them when it changes, are kept together in one row of `search_token_sets` (16 bytes
-- each, concatenated). Same tables and columns as migrations/postgres (whose token index is
-- this table's primary key).

CREATE TABLE search_token_sets (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    tokens        BLOB NOT NULL,
    PRIMARY KEY (tenant, resource_type, resource_id)
);
INSERT INTO search_token_sets
    SELECT tenant, resource_type, resource_id, CAST(group_concat(token, '') AS BLOB)
    FROM search_tokens GROUP BY tenant, resource_type, resource_id;

CREATE TABLE search_tokens_new (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    token         BLOB NOT NULL,
    PRIMARY KEY (token, tenant, resource_type, resource_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO search_tokens_new (tenant, resource_type, resource_id, token)
    SELECT tenant, resource_type, resource_id, token FROM search_tokens;
DROP TABLE search_tokens;
ALTER TABLE search_tokens_new RENAME TO search_tokens;
