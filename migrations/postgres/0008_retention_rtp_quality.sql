-- Retention ([database] retention, `otpdial purge`): audit rows that must be kept
-- past it (security events) have the personal data in them replaced by a keyed
-- hash; this says when that was done (NULL: not yet).
ALTER TABLE audit_log ADD COLUMN pseudonymised_at BIGINT;
CREATE INDEX audit_log_pseudonymised ON audit_log (pseudonymised_at, at);
-- Retention deletes a verification's webhook deliveries with it.
CREATE INDEX webhook_outbox_verification ON webhook_outbox (verification_id);
-- What the gateway measured of the far end's RTP during an attempt (RFC 3550
-- receive statistics): packets received, packets lost (expected - received,
-- never negative) and the interarrival jitter in microseconds. NULL: no media
-- was received, or the attempt predates this migration.
ALTER TABLE call_attempts ADD COLUMN rtp_received BIGINT;
ALTER TABLE call_attempts ADD COLUMN rtp_lost BIGINT;
ALTER TABLE call_attempts ADD COLUMN rtp_jitter_us BIGINT;
