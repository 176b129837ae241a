-- The durable dialer: the number the next round dials (NULL = the
-- verification's), how many rounds were claimed (retries count against
-- dialer.max_attempts), and why a call ended when its status alone does
-- not say (expired, gateway_restart, shutdown, ...).
ALTER TABLE calls ADD COLUMN phone TEXT;
ALTER TABLE calls ADD COLUMN rounds BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN reason TEXT;
-- Lease renewal and take-over look calls up by owner and by lease.
CREATE INDEX calls_claimed_by ON calls (claimed_by);
CREATE INDEX calls_lease ON calls (status, lease_until);
