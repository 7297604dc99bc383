-- The audit chain keyed with a secret kept outside this database.
--
-- Links written from now on are HMAC-SHA-256 under the configured chain key
-- and name that key (a fingerprint of it, never the key); links written
-- before keep `key_id = ''` and their plain SHA-256 hash. The head row gets
-- two MACs under the key, so neither can be moved by someone without it:
--   - the seal: the sequence from which every link is keyed, and the hash of
--     the link before it (which pins every unkeyed link written before);
--   - the anchor retention leaves, with the start time of the newest record
--     it deleted (so a deletion retention would not have made yet shows).

ALTER TABLE pgfleet.audit_chain
    ADD COLUMN key_id text NOT NULL DEFAULT '';

ALTER TABLE pgfleet.audit_chain_head
    ADD COLUMN keyed_since bigint,
    ADD COLUMN seal_prev_hash text NOT NULL DEFAULT '',
    ADD COLUMN seal_key_id text NOT NULL DEFAULT '',
    ADD COLUMN seal_mac text NOT NULL DEFAULT '',
    ADD COLUMN anchor_started_at timestamptz,
    ADD COLUMN anchor_key_id text NOT NULL DEFAULT '',
    ADD COLUMN anchor_mac text NOT NULL DEFAULT '';

-- Once the chain is sealed, an unkeyed link can only come from a server
-- without the key (an older binary during a rolling upgrade, or one
-- configured with allow_unkeyed): refuse it, so that writer's executions
-- are refused instead of breaking the chain for good. This guards against
-- mistakes, not against a superuser, who can drop it; VerifyChain is what
-- catches them.
CREATE FUNCTION pgfleet.audit_chain_refuse_unkeyed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sealed_at bigint;
BEGIN
    IF NEW.key_id = '' THEN
        SELECT keyed_since INTO sealed_at FROM pgfleet.audit_chain_head;
        IF sealed_at IS NOT NULL AND NEW.sequence >= sealed_at THEN
            RAISE EXCEPTION 'the audit chain is keyed since sequence %: this server has no chain key', sealed_at
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'configure [audit.chain] key or key_file on every server';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_chain_keyed_only
    BEFORE INSERT ON pgfleet.audit_chain
    FOR EACH ROW EXECUTE FUNCTION pgfleet.audit_chain_refuse_unkeyed();
