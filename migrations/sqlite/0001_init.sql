-- Times are unix milliseconds (BIGINT) so that SQLite and PostgreSQL store
-- and compare them the same way.
CREATE TABLE verifications (
    id              TEXT PRIMARY KEY,
    user_id         TEXT,
    phone           TEXT NOT NULL,
    locale          TEXT NOT NULL,
    code_hash       TEXT NOT NULL,        -- HMAC-SHA256(key, id:code), hex
    status          TEXT NOT NULL,
    attempts_left   BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    callback_url    TEXT,
    api_key         TEXT NOT NULL,
    idempotency_key TEXT
);
CREATE UNIQUE INDEX verifications_idempotency ON verifications (api_key, idempotency_key);
CREATE INDEX verifications_phone ON verifications (phone, created_at);
CREATE INDEX verifications_user ON verifications (user_id, created_at);

CREATE TABLE calls (
    id              TEXT PRIMARY KEY,
    verification_id TEXT NOT NULL REFERENCES verifications (id),
    status          TEXT NOT NULL,
    code_sealed     TEXT,                 -- code encrypted for the dialer; erased when the call ends
    sip_code        BIGINT,
    trunk           TEXT,
    answered_at     BIGINT,
    ended_at        BIGINT,
    times_played    BIGINT NOT NULL DEFAULT 0,
    claimed_by      TEXT,
    lease_until     BIGINT,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX calls_queue ON calls (status, next_attempt_at);
CREATE INDEX calls_verification ON calls (verification_id);

-- One row per number/trunk tried.
CREATE TABLE call_attempts (
    call_id     TEXT NOT NULL REFERENCES calls (id),
    seq         BIGINT NOT NULL,
    number      TEXT NOT NULL,
    trunk       TEXT NOT NULL,
    status      TEXT NOT NULL,
    sip_code    BIGINT,
    reason      TEXT,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    PRIMARY KEY (call_id, seq)
);

-- Every call.status transition, in order.
CREATE TABLE call_events (
    call_id   TEXT NOT NULL REFERENCES calls (id),
    seq       BIGINT NOT NULL,
    status    TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (call_id, seq)
);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
