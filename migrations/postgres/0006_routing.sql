-- Calling by country (issue 18, SPEC §7): the language a registered number hears,
-- what each route and caller ID achieved, caller IDs at rest, and trunk channels
-- shared by every instance on one database.

-- `PUT /v1/users/{id}/phones` entries may name a prompt pack; NULL = by country.
ALTER TABLE phones ADD COLUMN locale TEXT;

-- One row per attempt that reached a trunk: the route (trunk, destination country
-- code such as "+31"), the caller ID it showed (NULL: the trunk's `from`), whether
-- the callee answered, and whether the attempt got past the trunk to the phone
-- (ringing or a final answer of the callee's; trunk failures do not count against
-- a caller ID). Read over a recent window by quality routing and caller-ID resting.
CREATE TABLE route_outcomes (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    trunk     TEXT NOT NULL,
    country   TEXT NOT NULL,
    caller_id TEXT,
    pool      TEXT,
    answered  BIGINT NOT NULL,
    reached   BIGINT NOT NULL
);
CREATE INDEX route_outcomes_country ON route_outcomes (country, at);
CREATE INDEX route_outcomes_pool ON route_outcomes (pool, at);
CREATE INDEX route_outcomes_at ON route_outcomes (at);

-- A caller ID taken out of rotation until resting_until (answer rate well below its
-- pool's); its rate is judged afresh on calls after that.
CREATE TABLE caller_id_rests (
    number        TEXT PRIMARY KEY,
    pool          TEXT NOT NULL,
    rested_at     BIGINT NOT NULL,
    resting_until BIGINT NOT NULL,
    answer_rate   DOUBLE PRECISION NOT NULL,
    pool_rate     DOUBLE PRECISION NOT NULL
);

-- A trunk's channels (`max_concurrent_calls`) as rows that every instance takes
-- from: holder = the instance, NULL when free; a slot whose lease ran out (its
-- instance died) is free again.
CREATE TABLE trunk_slots (
    trunk       TEXT NOT NULL,
    slot        BIGINT NOT NULL,
    holder      TEXT,
    call_id     TEXT,
    lease_until BIGINT,
    PRIMARY KEY (trunk, slot)
);
