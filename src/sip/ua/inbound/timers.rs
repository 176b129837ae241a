//! The deadlines of inbound calls: resending a 2xx until its ACK or a refusal until
//! Timer H, the application's time to answer, and forgetting an ended call.

use super::*;

impl UserAgent {
    /// The earliest deadline of any inbound call.
    pub(in crate::sip::ua) fn inbound_deadline(&self) -> Option<Instant> {
        self.inbound
            .calls
            .values()
            .filter_map(InboundCall::next_deadline)
            .min()
    }

    /// Runs the inbound calls' due deadlines.
    pub(in crate::sip::ua) fn inbound_timers(&mut self, now: Instant) {
        let due: Vec<CallHandle> = self
            .inbound
            .calls
            .iter()
            .filter(|(_, c)| c.next_deadline().is_some_and(|t| t <= now))
            .map(|(h, _)| *h)
            .collect();
        for call in due {
            self.inbound_timer(now, call);
        }
    }

    fn inbound_timer(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.inbound.calls.get_mut(&call) else {
            return;
        };
        if c.remove_at.is_some_and(|t| t <= now) && c.resend.is_none() {
            self.inbound.calls.remove(&call);
            return;
        }
        if c.give_up_at.is_some_and(|t| t <= now) {
            c.give_up_at = None;
            c.resend = None;
            match c.stage {
                Stage::Offered => {
                    debug!(call = %call, "inbound call not answered in time");
                    self.refuse(now, call, 480);
                    self.end_inbound(now, call, EndReason::Timeout);
                }
                Stage::Answered { acked: false } => {
                    // §13.3.1.4: no ACK for 64*T1, the session ends with a BYE.
                    debug!(call = %call, "no ACK for our 200: hanging up");
                    self.send_inbound_bye(now, call);
                }
                Stage::Answered { acked: true } | Stage::Refused { .. } => {}
            }
            return;
        }
        if let Some((at, interval)) = c.resend.filter(|(at, _)| *at <= now) {
            let next = (interval * 2).min(T2);
            c.resend = Some((at + next, next));
            let (to, payload) = (c.reply_to, c.last_response.clone());
            self.transmit(to, payload);
            self.retransmits
                .count_sent(Method::Invite, Repeated::Response);
        }
    }
}
