//! Inbound calls on the endpoint (the canaries' far end): the driver hands each INVITE
//! the user agent accepted to the application as an [`IncomingCall`], which answers,
//! refuses or hangs it up and reads its events like an outgoing call's.

use super::{CallEvent, Command};
use crate::sip::{CallHandle, IncomingInvite, UserAgent};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;

/// One inbound call offered to the application. Dropping it before the call ended hangs
/// it up (refused with 480 if not answered, BYE if it was).
#[derive(Debug)]
pub struct IncomingCall {
    pub handle: CallHandle,
    pub invite: IncomingInvite,
    /// Dtmf (SIP INFO) and, last, `Ended`.
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    commands: mpsc::UnboundedSender<Command>,
    ended: bool,
}

impl IncomingCall {
    /// Answers with our SDP (200 OK, resent until the ACK).
    pub fn answer(&self, sdp: String) {
        let _ = self.commands.send(Command::Answer {
            call: self.handle,
            sdp,
        });
    }

    /// Refuses it (a final status 300..=699); `Ended` follows.
    pub fn reject(&self, status: u16) {
        let _ = self.commands.send(Command::Reject {
            call: self.handle,
            status,
        });
    }

    /// Hangs up (BYE once answered).
    pub fn hangup(&self) {
        let _ = self.commands.send(Command::Hangup(self.handle));
    }

    /// Marks the call as over (its `Ended` arrived): dropping it sends nothing more.
    pub fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for IncomingCall {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.commands.send(Command::Hangup(self.handle));
        }
    }
}

/// Where the driver sends inbound calls, and how sessions reach it back.
pub(super) struct InboundRoute {
    pub(super) calls: mpsc::UnboundedSender<IncomingCall>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
}

impl InboundRoute {
    /// Offers `invite` to the application; with nobody listening the call is refused
    /// (503) at once.
    pub(super) fn offer(
        &self,
        ua: &mut UserAgent,
        routes: &mut HashMap<CallHandle, mpsc::UnboundedSender<CallEvent>>,
        call: CallHandle,
        invite: IncomingInvite,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(call, tx);
        let offered = IncomingCall {
            handle: call,
            invite,
            events: rx,
            commands: self.commands.clone(),
            ended: false,
        };
        if let Err(refused) = self.calls.send(offered) {
            let mut call = refused.0;
            call.ended();
            ua.reject(Instant::now(), call.handle, 503);
        }
    }
}
