//! SIP protocol core (sans-IO).
