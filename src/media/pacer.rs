//! placeholder
pub struct Pacer;
pub struct Playout;
pub enum PlayoutEvent {}
pub struct PlayoutSpec;
