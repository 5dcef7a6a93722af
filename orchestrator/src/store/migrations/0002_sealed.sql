-- Zero-knowledge credentials: what the host may know of a credential without opening it, which
-- CLI VM holds its live token chain, and each user's public key (the private half stays with the
-- user's browser).
ALTER TABLE credentials ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE credentials ADD COLUMN scopes TEXT;
ALTER TABLE credentials ADD COLUMN holder_vm TEXT;

CREATE TABLE user_keys (
    user_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
