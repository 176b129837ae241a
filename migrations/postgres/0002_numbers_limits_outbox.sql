-- Registered numbers per user (at most 8, exactly one primary: enforced by
-- the API, which replaces the list in one transaction).
CREATE TABLE phones (
    user_id     TEXT NOT NULL,
    number      TEXT NOT NULL,
    is_primary  BIGINT NOT NULL,
    label       TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, number)
);
CREATE INDEX phones_number ON phones (number);

CREATE INDEX verifications_api_key ON verifications (api_key, created_at);
CREATE INDEX verifications_created ON verifications (created_at);

-- Who did what, when, with what outcome. Never a code.
CREATE TABLE audit_log (
    id       TEXT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    outcome  TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Calls started per country calling code per UTC day (toll-fraud budget),
-- spread over a few shard rows so that concurrent starts to one country do
-- not all queue on one row lock; the budget is their sum.
CREATE TABLE daily_budget (
    day      TEXT NOT NULL,
    country  TEXT NOT NULL,
    shard    BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (day, country, shard)
);

-- Webhook deliveries: written with the status change, delivered by a
-- worker with backoff; survives restarts.
CREATE TABLE webhook_outbox (
    id               TEXT PRIMARY KEY,
    verification_id  TEXT NOT NULL,
    url              TEXT NOT NULL,
    event            TEXT NOT NULL,
    payload          TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_until      BIGINT,
    delivered_at     BIGINT,
    dead             BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, dead, next_attempt_at);

ALTER TABLE calls ADD COLUMN claimed_at BIGINT;
CREATE INDEX calls_claimed_at ON calls (claimed_at);
