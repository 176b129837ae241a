//! Fuzz target: any bytes into the SIP message parser the user agent uses for every
//! datagram. It must return Ok or Err, never panic. The main test suite runs the same
//! entry point under a seeded mutation loop (`sip::tests`), and replays the committed
//! corpus and regressions (`tests/it/fuzz_corpus.rs`), since CI may have no libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| entries::parse_message(data));
