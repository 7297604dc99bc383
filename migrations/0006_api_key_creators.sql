-- An API key acts with the authority of the MASTER who created it: it works
-- only while that user exists, is active and still holds MASTER. The
-- server checks that on every use (joined with pgfleet.users), and
-- deactivation and demotion also revoke the user's keys, so a later
-- reactivation or promotion does not bring them back.

ALTER TABLE pgfleet.api_keys
    -- NULL: no creator on record (deleted user, or a key the backfill below
    -- could not attribute); such a key is refused.
    ADD COLUMN created_by_user_id uuid REFERENCES pgfleet.users (id) ON DELETE SET NULL;

-- Existing keys recorded their creator as the label `user:<username>`;
-- usernames are unique and never renamed, so the label names one user.
UPDATE pgfleet.api_keys k
SET created_by_user_id = u.id
FROM pgfleet.users u
WHERE k.created_by = 'user:' || u.username;

-- Keys whose creator is unknown, inactive or no longer MASTER would be
-- refused from now on; revoke them so they stay dead if that user comes back.
UPDATE pgfleet.api_keys k
SET revoked_at = now()
WHERE k.revoked_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM pgfleet.users u
      WHERE u.id = k.created_by_user_id AND u.active AND u.role = 'MASTER'
  );

-- Deactivation and demotion revoke a user's live keys through this.
CREATE INDEX api_keys_live_by_creator ON pgfleet.api_keys (created_by_user_id) WHERE revoked_at IS NULL;
