-- The server's own role (the owner of its tables) gives up UPDATE, DELETE and TRUNCATE on the
-- sealed audit log, and UPDATE and TRUNCATE on the inbox (the sealer only deletes from it).
-- With the triggers of 0005 this is a second, independent refusal: a role that is not a
-- superuser can no longer change a sealed entry even after disabling the triggers, unless it
-- first grants the right back to itself, which is itself a visible DDL act.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, audit_hashes, audit_checkpoints FROM PUBLIC, CURRENT_USER;
REVOKE UPDATE, TRUNCATE ON audit_records FROM PUBLIC, CURRENT_USER;
