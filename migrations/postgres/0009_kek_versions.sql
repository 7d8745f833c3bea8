-- Which key-encryption key of the key provider is each tenant's KEK of a given version. A
-- provider that generates KEKs (an HSM) gives each an id (PKCS#11 CKA_ID); replicas starting
-- together may each generate one, and the first to record its id here wins: the others destroy
-- theirs and use the recorded one, so every wrapped key of a tenant and version is under the
-- same KEK. Rotation adds versions.
CREATE TABLE kek_versions (
    tenant     TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    key_id     BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, version)
);
