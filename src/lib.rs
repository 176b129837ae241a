//! otpdial: a voice-call OTP gateway.
//!
//! Layers (data flows one way, see DESIGN.md):
//! `api` -> `verify` -> `store` <- `dialer` -> `call` -> `sip_io` (`sip`) + `media`.
//! `sip` and `media::script` are pure protocol logic without I/O; `domain`
//! holds the validated value types everything else uses.

pub mod api;
pub mod app;
pub mod call;
pub mod canary;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod demo;
pub mod dialer;
pub mod dns;
pub mod domain;
pub mod egress;
pub mod media;
pub mod metrics;
pub mod ops;
pub mod retention;
pub mod risk;
pub mod signing;
pub mod sip;
pub mod sip_io;
pub mod store;
pub mod sync;
pub mod testphone;
pub mod trunks;
pub mod verify;
pub mod webhooks;
