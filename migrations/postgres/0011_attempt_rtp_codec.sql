-- The rest of what the gateway measured of the far end's RTP during an attempt
-- (beside 0008's rtp_received, rtp_lost, rtp_jitter_us): the G.711 law of its
-- audio ('PCMU' | 'PCMA'; NULL when none came) and the packets dropped for
-- failing SRTP authentication or the replay check (NULL with no media).
ALTER TABLE call_attempts ADD COLUMN rtp_codec TEXT;
ALTER TABLE call_attempts ADD COLUMN rtp_srtp_rejected BIGINT;
