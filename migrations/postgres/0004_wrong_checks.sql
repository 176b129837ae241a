-- Wrong code checks per subject (a user, or the number when no user is
-- known, or an API key guessing unknown ids): the brute-force guard across
-- verifications counts them over limits.wrong_checks_per_user and backs
-- off between tries. Never a code. Pruned after a day.
CREATE TABLE wrong_checks (
    subject TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX wrong_checks_subject ON wrong_checks (subject, at);
CREATE INDEX wrong_checks_at ON wrong_checks (at);
