//! Fuzz target: any bytes into the SIP message parser the user agent uses for every
//! datagram. It must return Ok or Err, never panic. The main test suite runs the same
//! entry point under a seeded mutation loop (`sip::tests`), since CI has no nightly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = otpdial::sip::parse_message(data);
});
