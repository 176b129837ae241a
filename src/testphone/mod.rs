//! Built-in answering test phone.
