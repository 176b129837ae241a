//! What the user agent's tables and deadlines are keyed by: client transactions by
//! (Via branch, method) as RFC 3261 §17.1.3 matches responses, server transactions by
//! (branch, sent-by, method) as §17.2.3 matches requests, and the deadlines of both and
//! of ended calls.

use super::CallHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum TxMethod {
    Invite,
    Bye,
    Cancel,
    Register,
    Options,
}

pub(super) type ClientKey = (String, TxMethod);
/// Branch, sent-by and method of the request (RFC 3261 §17.2.3).
pub(super) type ServerKey = (String, String, String);

/// What a deadline belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    Client(ClientKey),
    Server(ServerKey),
    Call(CallHandle),
}
