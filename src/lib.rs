//! otpdial: a voice-call OTP gateway.
//!
//! Layers (data flows one way, see DESIGN.md):
//! `api` -> `verify` -> `store` <- `dialer` -> `call` -> `sip_io` (`sip`) + `media`.
//! `sip` and `media::script` are pure protocol logic without I/O.

pub mod media;
pub mod sip;
pub mod sip_io;
pub mod testphone;
