//! Fuzz target: datagrams on a call's RTP/RTCP ports: the RTP receive path (RFC 4733
//! telephone-events, in-band DTMF in G.711), the RTCP check, the RFC 4733 parser.
//! The entry point is in `../entries.rs`, which the corpus replay test
//! (`tests/it/fuzz_corpus.rs`) also runs on every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| entries::rtp_receive(data));
