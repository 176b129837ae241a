//! Prompt packs, G.711, call script and RTP playout.
