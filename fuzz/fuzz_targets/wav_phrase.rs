//! Fuzz target: a prompt phrase's WAV file bytes into `media::prompts::decode_wav` (hound,
//! the G.711 WAV reader, resampling, trimming).
//! The entry point is in `../entries.rs`, which the corpus replay test
//! (`tests/it/fuzz_corpus.rs`) also runs on every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| entries::wav_phrase(data));
