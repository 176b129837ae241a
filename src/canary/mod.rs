//! Canaries (SPEC §7 `[[canaries]]`, `[canary]`): scheduled calls through each trunk
//! with a fresh random code, heard and scored at the far end by the built-in test phone,
//! with alerts when a canary keeps failing.
//!
//! Pure parts: [`emodel`] (ITU-T G.107 rating and MOS), [`verdict`] (a run's result from
//! what both ends saw), [`health`] (`ok`/`failing` and when to alert).
//! May depend on `config`, `domain`, `store`, `call`, `sip_io`, `media`, `testphone`;
//! the API only reads what the store holds.

pub mod emodel;
pub mod health;
pub mod verdict;

pub use health::{Alert, CanaryState, Health};
pub use verdict::{classify, CallerEnd, FarEnd, Heard, RunResult};
