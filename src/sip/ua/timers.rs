//! The user agent's deadlines, kept in one binary heap of `(instant, what)` with lazy
//! deletion: client and server transactions and ended calls. Each of them remembers the
//! one instant it is queued at (`queued`, its earliest deadline when last scheduled); a
//! heap entry whose instant no longer matches (the deadline moved, or the transaction or
//! call is gone) is dropped when it comes up. So [`UserAgent::poll_timeout`] is a peek and
//! [`UserAgent::handle_timeout`] visits only what is due, instead of rescanning every
//! transaction and call on each event. An ended call waits for its open transactions by a
//! count (`Call::open_txs`), not by a scan.

use super::keys::{ClientKey, TimerKey};
use super::transaction::ClientTx;
use super::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Min-heap of deadlines; entries may be stale (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl Timers {
    /// The earliest queued instant (possibly of a stale entry: an early wake-up, no more).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

impl UserAgent {
    /// Queues `key` at its earliest deadline, unless it is queued there already. Called
    /// after anything that may add or advance a deadline; a deadline that moves later or
    /// goes away needs no call (its old entry comes up, finds nothing due, and requeues).
    pub(super) fn schedule(&mut self, key: TimerKey) {
        let (slot, next) = match &key {
            TimerKey::Client(k) => match self.client_txs.get_mut(k) {
                Some(tx) => {
                    let next = tx.next_deadline();
                    (&mut tx.queued, next)
                }
                None => return,
            },
            TimerKey::Server(k) => match self.server_txs.get_mut(k) {
                Some(stx) => {
                    let next = Some(stx.next_deadline());
                    (&mut stx.queued, next)
                }
                None => return,
            },
            TimerKey::Call(h) => match self.calls.get_mut(h) {
                Some(c) => {
                    // A call still referenced by a transaction is requeued when the last
                    // one goes; queuing its past deadline now would make the driver spin.
                    let next = c.remove_at.filter(|_| c.ended && c.open_txs == 0);
                    (&mut c.queued, next)
                }
                None => return,
            },
        };
        if *slot != next {
            *slot = next;
            if let Some(at) = next {
                self.timers.heap.push(Reverse((at, key)));
            }
        }
    }

    /// The instant `key` is queued at, if it still exists.
    fn queued_at(&self, key: &TimerKey) -> Option<Instant> {
        match key {
            TimerKey::Client(k) => self.client_txs.get(k).and_then(|t| t.queued),
            TimerKey::Server(k) => self.server_txs.get(k).and_then(|t| t.queued),
            TimerKey::Call(h) => self.calls.get(h).and_then(|c| c.queued),
        }
    }

    fn clear_queued(&mut self, key: &TimerKey) {
        let slot = match key {
            TimerKey::Client(k) => self.client_txs.get_mut(k).map(|t| &mut t.queued),
            TimerKey::Server(k) => self.server_txs.get_mut(k).map(|t| &mut t.queued),
            TimerKey::Call(h) => self.calls.get_mut(h).map(|c| &mut c.queued),
        };
        if let Some(slot) = slot {
            *slot = None;
        }
    }

    /// Visits every transaction and call with a deadline at or before `now`, in order.
    pub(super) fn run_due_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.heap.pop() else {
                break;
            };
            if self.queued_at(&key) != Some(at) {
                continue; // stale
            }
            self.clear_queued(&key);
            match &key {
                TimerKey::Client(k) => self.client_tx_timer(now, k),
                TimerKey::Server(k) => self.server_tx_timer(now, k),
                TimerKey::Call(h) => self.forget_call_if_done(now, *h),
            }
            // Whatever deadline is left (a next retransmission, a later removal).
            self.schedule(key);
        }
        self.drop_stale_timers();
    }

    /// Pops stale entries off the top, so `poll_timeout` names a live deadline.
    pub(super) fn drop_stale_timers(&mut self) {
        while let Some(Reverse((at, key))) = self.timers.heap.peek() {
            if self.queued_at(key) == Some(*at) {
                break;
            }
            self.timers.heap.pop();
        }
    }

    /// Adds a client transaction, counted against its call.
    pub(super) fn insert_client_tx(&mut self, key: ClientKey, tx: ClientTx) {
        if let Some(c) = self.calls.get_mut(&tx.call) {
            c.open_txs += 1;
        }
        if let Some(old) = self.client_txs.insert(key.clone(), tx) {
            self.uncount_tx(old.call);
        }
        self.schedule(TimerKey::Client(key));
    }

    /// Removes a client transaction; its call, once ended and without transactions, is
    /// queued to be forgotten.
    pub(super) fn remove_client_tx(&mut self, key: &ClientKey) -> Option<ClientTx> {
        let tx = self.client_txs.remove(key)?;
        self.uncount_tx(tx.call);
        Some(tx)
    }

    fn uncount_tx(&mut self, call: CallHandle) {
        if let Some(c) = self.calls.get_mut(&call) {
            c.open_txs = c.open_txs.saturating_sub(1);
            if c.open_txs == 0 {
                self.schedule(TimerKey::Call(call));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::transaction::ByePurpose;
    use super::*;

    fn ua() -> UserAgent {
        UserAgent::new(UaConfig {
            local_addr: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: None,
            server_header: String::new(),
            policy: Default::default(),
            registrar: None,
        })
    }

    #[test]
    fn moved_and_removed_deadlines_leave_no_live_entry_behind() {
        let mut ua = ua();
        let now = Instant::now();
        let dest: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        for i in 0..100 {
            let key = (format!("z9hG4bK{i}"), TxMethod::Options);
            ua.start_client_tx(now, key, NO_CALL, dest, b"X".to_vec(), ByePurpose::Silent);
        }
        assert_eq!(ua.poll_timeout(), Some(now + transaction::T1));
        // Every transaction completes: its retransmission entry goes stale.
        for tx in ua.client_txs.values_mut() {
            tx.retransmit_at = None;
            tx.timeout_at = None;
            tx.remove_at = Some(now + transaction::TIMER_K);
        }
        let keys: Vec<ClientKey> = ua.client_txs.keys().cloned().collect();
        for k in keys {
            ua.schedule(TimerKey::Client(k));
        }
        ua.drop_stale_timers();
        assert_eq!(ua.poll_timeout(), Some(now + transaction::TIMER_K));
        assert_eq!(ua.timers.len(), 100, "the stale entries were dropped");
        ua.handle_timeout(now + transaction::TIMER_K);
        assert!(ua.is_idle());
        assert_eq!(ua.poll_timeout(), None);
        assert_eq!(ua.timers.len(), 0);
    }
}
