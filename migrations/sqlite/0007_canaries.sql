-- Canaries (issue 19, SPEC §7): scheduled test calls through each trunk, heard by
-- the built-in test phone at the far end. Never a code in clear: a run keeps the
-- keyed hash of its code, an arrival the keyed hash of what it heard, and the heard
-- digits only when they match no run of that number.

-- One row per canary: when it runs next (the instance that moves next_run_at
-- places the run), its health, and when it last succeeded.
CREATE TABLE canary_state (
    canary               TEXT PRIMARY KEY,
    next_run_at          BIGINT NOT NULL,
    state                TEXT NOT NULL DEFAULT 'ok',
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_success_at      BIGINT,
    updated_at           BIGINT NOT NULL
);

-- One row per run; result is NULL while it runs.
CREATE TABLE canary_runs (
    id                 TEXT PRIMARY KEY,
    canary             TEXT NOT NULL,
    number             TEXT NOT NULL,
    far_end            TEXT NOT NULL,
    trunk              TEXT,
    code_hash          TEXT NOT NULL,
    sip_call_id        TEXT,
    placed_by          TEXT NOT NULL,
    started_at         BIGINT NOT NULL,
    ringing_at         BIGINT,
    answered_at        BIGINT,
    ended_at           BIGINT,
    sip_code           BIGINT,
    result             TEXT,
    reason             TEXT,
    post_dial_delay_ms BIGINT,
    setup_ms           BIGINT,
    loss               REAL,
    jitter_ms          REAL,
    mos                REAL,
    codec              TEXT,
    heard              TEXT,
    arrival_id         TEXT,
    finished_at        BIGINT
);
CREATE INDEX canary_runs_by_canary ON canary_runs (canary, started_at);
CREATE INDEX canary_runs_by_day ON canary_runs (started_at);

-- One row per inbound call answered by the test phone for an answer number; the
-- run that placed it claims it (run_id).
CREATE TABLE canary_arrivals (
    id           TEXT PRIMARY KEY,
    number       TEXT NOT NULL,
    sip_call_id  TEXT NOT NULL,
    answered_by  TEXT NOT NULL,
    arrived_at   BIGINT NOT NULL,
    reported_at  BIGINT,
    heard_hash   TEXT,
    heard        TEXT,
    codec        TEXT,
    received     BIGINT,
    expected     BIGINT,
    lost         BIGINT,
    jitter_ms    REAL,
    gaps         BIGINT,
    max_gap_ms   REAL,
    burst_ratio  REAL,
    first_rtp_at BIGINT,
    run_id       TEXT
);
CREATE INDEX canary_arrivals_by_number ON canary_arrivals (number, arrived_at);

-- Alerts to [canary] alert_url, delivered (signed, retried) like webhooks.
CREATE TABLE canary_alerts (
    id              TEXT PRIMARY KEY,
    canary          TEXT NOT NULL,
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    delivered_at    BIGINT,
    last_error      TEXT,
    dead            BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX canary_alerts_due ON canary_alerts (delivered_at, dead, next_attempt_at);
