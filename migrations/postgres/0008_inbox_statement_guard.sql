-- The inbox's guard against deletion moves from each row to each statement. A sealing pass
-- deletes the few thousand records it has just copied into the log in one statement, and the
-- row trigger of 0005 ran its check once per record: about a tenth of the database's time in
-- a pass. The check is the same function (only a transaction that took the sealer lock and
-- said so may delete), now run once, before the statement touches any row; its `RETURN OLD`
-- is NULL and ignored at statement level. UPDATE and TRUNCATE stay refused as before.
CREATE TRIGGER audit_records_sealer_only_statement BEFORE DELETE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_sealer_only();
DROP TRIGGER audit_records_sealer_only ON audit_records;
