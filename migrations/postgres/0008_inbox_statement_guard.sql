-- The inbox's guard against deletion moves from each row to each statement. A sealing pass
-- deletes the few thousand records it has just copied into the log in one statement, and the
-- row trigger of 0005 ran its check once per record: about a tenth of the database's time in
-- a pass. The check itself is the same (only a transaction that took the sealer lock and said
-- so may delete); it is now made once, before the statement touches any row. UPDATE and
-- TRUNCATE stay refused as before.
CREATE FUNCTION audit_records_sealer_only_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('fhirvault.sealer', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'audit records are append-only (only the sealer moves them into the log)';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_records_sealer_only_statement BEFORE DELETE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_sealer_only_statement();
DROP TRIGGER audit_records_sealer_only ON audit_records;
DROP FUNCTION audit_records_sealer_only();
