//! Fuzz target: an SDP answer body (the far end's 200 OK/183) into `sip::sdp::parse_answer`.
//! The entry point is in `../entries.rs`, which the corpus replay test
//! (`tests/it/fuzz_corpus.rs`) also runs on every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| entries::sdp_answer(data));
