//! Fuzz target: config file text into `Settings::from_toml`: an error, never a panic.
//! The entry point is in `../entries.rs`, which the corpus replay test
//! (`tests/it/fuzz_corpus.rs`) also runs on every committed input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| entries::config_toml(data));
