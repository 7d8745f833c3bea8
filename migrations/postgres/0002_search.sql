-- The search index of each resource's current version. Same tables, columns and indexes as
-- migrations/sqlite. Strings, codes, identifiers and external URLs are never stored: only
-- their blind-index tokens (keyed HMAC-SHA256, truncated to 16 bytes, under the tenant's search
-- key; the token input names the resource type and the parameter). Dates, numbers, quantities
-- and references to this server's opaque ids are stored in clear (see SECURITY.md).

CREATE TABLE search_tokens (
    tenant        TEXT  NOT NULL,
    resource_type TEXT  NOT NULL,
    resource_id   TEXT  NOT NULL,
    token         BYTEA NOT NULL
);
CREATE INDEX search_tokens_by_token ON search_tokens (tenant, token, resource_type, resource_id);
CREATE INDEX search_tokens_by_resource ON search_tokens (tenant, resource_type, resource_id);

-- [lo, hi) in milliseconds since the epoch, UTC; an open end is the extreme BIGINT.
CREATE TABLE search_dates (
    tenant        TEXT   NOT NULL,
    resource_type TEXT   NOT NULL,
    resource_id   TEXT   NOT NULL,
    param         TEXT   NOT NULL,
    lo            BIGINT NOT NULL,
    hi            BIGINT NOT NULL
);
CREATE INDEX search_dates_by_value ON search_dates (tenant, resource_type, param, lo);
CREATE INDEX search_dates_by_resource ON search_dates (tenant, resource_type, resource_id);

-- Numbers, and quantities with their unit (system, code, unit as written).
CREATE TABLE search_numbers (
    tenant        TEXT             NOT NULL,
    resource_type TEXT             NOT NULL,
    resource_id   TEXT             NOT NULL,
    param         TEXT             NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    system        TEXT,
    code          TEXT,
    unit          TEXT
);
CREATE INDEX search_numbers_by_value ON search_numbers (tenant, resource_type, param, value);
CREATE INDEX search_numbers_by_resource ON search_numbers (tenant, resource_type, resource_id);

-- References to resources of this server (`Type/id`).
CREATE TABLE search_refs (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    target_type   TEXT NOT NULL,
    target_id     TEXT NOT NULL
);
CREATE INDEX search_refs_by_target ON search_refs (tenant, target_id, target_type, resource_type, param);
CREATE INDEX search_refs_by_resource ON search_refs (tenant, resource_type, resource_id);
