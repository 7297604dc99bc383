-- People and services that may call pgfleet. Sessions are not here: they
-- live in Redis (or the server process) and hold only a user id.

CREATE TABLE pgfleet.users (
    id                  uuid        PRIMARY KEY,
    -- Lower-case, validated by the server; unique as stored.
    username            text        NOT NULL,
    email               text        NOT NULL,
    name                text        NOT NULL DEFAULT '',
    -- bcrypt hash (cost in its prefix); never leaves the server.
    password_hash       text        NOT NULL,
    role                text        NOT NULL,
    active              boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_login_at       timestamptz,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_role_check CHECK (role IN ('MASTER', 'USER', 'READER')),
    CONSTRAINT users_username_lower CHECK (username = lower(username))
);

-- E-mail addresses compare case-insensitively.
CREATE UNIQUE INDEX users_email_key ON pgfleet.users (lower(email));
-- The last-active-MASTER guard counts these.
CREATE INDEX users_active_role ON pgfleet.users (role) WHERE active;

CREATE TABLE pgfleet.api_keys (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    -- The public part of the key (`pgf_<key_prefix>_<secret>`), used to find
    -- the row; the secret itself is stored only as its SHA-256.
    key_prefix      text        NOT NULL,
    secret_sha256   bytea       NOT NULL,
    role            text        NOT NULL,
    -- [{"cloud": "aws" | "*", "database": "app" | "*"}, ...]
    allowed_targets jsonb       NOT NULL,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    last_used_at    timestamptz,
    revoked_at      timestamptz,
    CONSTRAINT api_keys_key_prefix_key UNIQUE (key_prefix),
    -- Keys never carry MASTER: a leaked service key must not manage users.
    CONSTRAINT api_keys_role_check CHECK (role IN ('USER', 'READER')),
    CONSTRAINT api_keys_secret_length CHECK (octet_length(secret_sha256) = 32),
    CONSTRAINT api_keys_allowed_targets_array CHECK (jsonb_typeof(allowed_targets) = 'array')
);

-- A name identifies one live key; a revoked key's name may be reused.
CREATE UNIQUE INDEX api_keys_live_name ON pgfleet.api_keys (name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_created ON pgfleet.api_keys (created_at, id);
