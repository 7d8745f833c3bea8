-- Key rotation and crypto-shredding.
--
-- A KEK version is primary (the newest not destroyed), decrypt-only (older, still wrapping
-- keys while a rotation re-wraps them) or destroyed (`destroyed_at`: the provider no longer
-- holds it, so nothing it wrapped, in this database or any copy of it, opens again). `wraps`
-- and `unwraps` count the provider calls made with it (flushed by each server now and then).
ALTER TABLE kek_versions ADD COLUMN destroyed_at INTEGER;
ALTER TABLE kek_versions ADD COLUMN wraps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE kek_versions ADD COLUMN unwraps INTEGER NOT NULL DEFAULT 0;

-- A patient's erasure (GDPR art. 17): requested, then due at `due_at` (cancellable until then),
-- then done: the compartment key is replaced by a tombstone (kek_version 0, no key) and the
-- search rows of the compartment are gone. One row per patient; the audit log keeps the history.
CREATE TABLE patient_erasures (
    tenant       TEXT    NOT NULL,
    patient_id   TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('scheduled', 'cancelled', 'done')),
    requested_at INTEGER NOT NULL,
    requested_by TEXT    NOT NULL,
    due_at       INTEGER NOT NULL,
    done_at      INTEGER,
    PRIMARY KEY (tenant, patient_id)
) WITHOUT ROWID;

CREATE INDEX patient_erasures_due ON patient_erasures (state, due_at);

-- Legal holds: while a patient has one, their data cannot be erased. Set and cleared through an
-- audited operation; the reason is an administrator's note, never health data.
CREATE TABLE legal_holds (
    tenant     TEXT    NOT NULL,
    patient_id TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    set_by     TEXT    NOT NULL,
    set_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, patient_id)
) WITHOUT ROWID;
