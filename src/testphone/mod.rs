//! Built-in answering test phone.

pub mod recognize;
