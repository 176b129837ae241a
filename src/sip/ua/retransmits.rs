//! How many SIP retransmissions the user agent sent and received, by method and by what
//! was repeated (a request or a response). Sent: a client transaction's Timer A/E
//! resend, a 2xx resent until its ACK (ours to a re-INVITE, an inbound call's), a cached
//! answer repeated for a retransmitted request, an ACK repeated for a retransmitted
//! final. Received: a request that matched a server transaction or an inbound INVITE
//! transaction, a final response that matched a completed client transaction or a call
//! that had its 2xx already. Each is absorbed (answered from state), never acted on
//! twice. A lossy path shows here first.

use super::keys::TxMethod;
use rsip::Method;

/// Whether the repeated message was a request or a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Repeated {
    Request = 0,
    Response = 1,
}

/// The `method` label of each row; the last collects every other method.
const METHODS: [&str; 8] = [
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO", "other",
];
/// The `kind` label of each column, indexed by [`Repeated`].
const KINDS: [&str; 2] = ["request", "response"];

/// Counts of retransmissions, indexed `[method][kind]` like [`METHODS`] and [`KINDS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retransmissions {
    pub sent: [[u64; 2]; 8],
    pub received: [[u64; 2]; 8],
}

fn row(method: &Method) -> usize {
    match method {
        Method::Invite => 0,
        Method::Ack => 1,
        Method::Bye => 2,
        Method::Cancel => 3,
        Method::Register => 4,
        Method::Options => 5,
        Method::Info => 6,
        _ => 7,
    }
}

impl From<TxMethod> for Method {
    fn from(m: TxMethod) -> Method {
        match m {
            TxMethod::Invite => Method::Invite,
            TxMethod::Bye => Method::Bye,
            TxMethod::Cancel => Method::Cancel,
            TxMethod::Register => Method::Register,
            TxMethod::Options => Method::Options,
        }
    }
}

impl Retransmissions {
    pub(super) fn count_sent(&mut self, method: impl Into<Method>, what: Repeated) {
        self.sent[row(&method.into())][what as usize] += 1;
    }

    pub(super) fn count_received(&mut self, method: impl Into<Method>, what: Repeated) {
        self.received[row(&method.into())][what as usize] += 1;
    }

    /// Every (method, kind, count) of `table` (`sent` or `received`), zeros included.
    pub fn labelled(table: &[[u64; 2]; 8]) -> Vec<(&'static str, &'static str, u64)> {
        METHODS
            .iter()
            .zip(table)
            .flat_map(|(m, counts)| KINDS.iter().zip(counts).map(|(k, n)| (*m, *k, *n)))
            .collect()
    }

    pub fn total_sent(&self) -> u64 {
        self.sent.iter().flatten().sum()
    }

    pub fn total_received(&self) -> u64 {
        self.received.iter().flatten().sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::transaction::ByePurpose;
    use super::super::*;
    use super::*;
    use crate::sip::sdp::{AudioCodec, MediaOffer};
    use crate::sip::OutgoingCall;

    const PEER: &str = "127.0.0.1:5070";

    fn ua() -> UserAgent {
        UserAgent::new(UaConfig {
            local_addr: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: None,
            server_header: String::new(),
            policy: Default::default(),
            registrar: None,
        })
    }

    fn sent(ua: &mut UserAgent) -> Vec<Message> {
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|t| message::parse(&t.payload).unwrap())
            .collect()
    }

    /// Runs the timers up to `until`.
    fn advance(ua: &mut UserAgent, until: Instant) {
        while let Some(t) = ua.poll_timeout().filter(|t| *t <= until) {
            ua.handle_timeout(t);
        }
    }

    /// A final response to `req` with To tag `tag`.
    fn answer(req: &Message, status: &str, tag: &str, extra: &str) -> String {
        format!(
            "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={tag}\r\nCall-ID: {}\r\n\
             CSeq: {} {}\r\n{extra}Content-Length: 0\r\n\r\n",
            req.vias[0], req.from, req.to, req.call_id, req.cseq, req.cseq_method
        )
    }

    #[test]
    fn timer_e_resends_and_a_repeated_final_are_counted() {
        let mut ua = ua();
        let start = Instant::now();
        let key = ("z9hG4bKc".to_string(), TxMethod::Options);
        let dest: SocketAddr = PEER.parse().unwrap();
        let request = "OPTIONS sip:x@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKc\r\n\
                       From: <sip:a@x>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\
                       Content-Length: 0\r\n\r\n";
        ua.start_client_tx(
            start,
            key,
            NO_CALL,
            dest,
            request.as_bytes().to_vec(),
            ByePurpose::Silent,
        );
        // Sent at 0, 0.5, 1.5 and 3.5 s: three retransmissions.
        advance(&mut ua, start + Duration::from_millis(3600));
        assert_eq!(sent(&mut ua).len(), 4);
        assert_eq!(ua.retransmissions().sent[5], [3, 0], "OPTIONS requests");
        let req = message::parse(request.as_bytes()).unwrap();
        let ok = answer(&req, "200 OK", "t", "");
        ua.handle_datagram(start + Duration::from_secs(4), dest, ok.as_bytes());
        assert_eq!(
            ua.retransmissions().received,
            [[0; 2]; 8],
            "the first is no repeat"
        );
        ua.handle_datagram(start + Duration::from_secs(4), dest, ok.as_bytes());
        assert_eq!(
            ua.retransmissions().received[5],
            [0, 1],
            "absorbed in Timer K"
        );
        assert!(sent(&mut ua).is_empty());
        // Nothing more once it completed.
        advance(&mut ua, start + Duration::from_secs(40));
        assert_eq!(ua.retransmissions().total_sent(), 3);
    }

    fn call(ua: &mut UserAgent, now: Instant) -> Message {
        ua.trust_source(PEER.parse::<SocketAddr>().unwrap().ip());
        ua.invite(
            now,
            OutgoingCall {
                request_uri: format!("sip:+31612345678@{PEER}"),
                destination: PEER.parse().unwrap(),
                from_uri: "sip:+31508200000@example.invalid".into(),
                from_display: None,
                media: MediaOffer {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 40000,
                    codecs: vec![AudioCodec::Pcma],
                    telephone_event_pt: 101,
                    ptime_ms: 20,
                    srtp: None,
                },
                credentials: None,
                extra_headers: Vec::new(),
                transport: Transport::Udp,
                pin_flow: false,
            },
        );
        sent(ua).remove(0)
    }

    #[test]
    fn invite_resends_and_repeated_2xx_are_counted_with_the_acks_they_cost() {
        let mut ua = ua();
        let start = Instant::now();
        let invite = call(&mut ua, start);
        // Timer A: resent at 0.5 and 1.5 s.
        advance(&mut ua, start + Duration::from_millis(1600));
        assert_eq!(sent(&mut ua).len(), 2);
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 30000 RTP/AVP 8\r\n";
        let ok = answer(
            &invite,
            "200 OK",
            "p",
            &format!("Contact: <sip:callee@{PEER}>\r\n"),
        )
        .replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            ),
        );
        let now = start + Duration::from_secs(2);
        ua.handle_datagram(now, PEER.parse().unwrap(), ok.as_bytes());
        assert_eq!(sent(&mut ua).len(), 1, "the ACK");
        ua.handle_datagram(now, PEER.parse().unwrap(), ok.as_bytes());
        let again = sent(&mut ua);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].cseq_method, Method::Ack);
        let r = ua.retransmissions();
        assert_eq!(r.sent[0], [2, 0], "INVITE requests (Timer A)");
        assert_eq!(r.sent[1], [1, 0], "the ACK repeated");
        assert_eq!(r.received[0], [0, 1], "the repeated 200");
        assert_eq!((r.total_sent(), r.total_received()), (3, 1));
    }

    #[test]
    fn a_repeated_error_final_gets_its_ack_again_and_is_counted() {
        let mut ua = ua();
        let start = Instant::now();
        let invite = call(&mut ua, start);
        let busy = answer(&invite, "486 Busy Here", "p", "");
        ua.handle_datagram(start, PEER.parse().unwrap(), busy.as_bytes());
        assert_eq!(sent(&mut ua).len(), 1, "the ACK");
        ua.handle_datagram(start, PEER.parse().unwrap(), busy.as_bytes());
        assert_eq!(sent(&mut ua).len(), 1, "the ACK again");
        let r = ua.retransmissions();
        assert_eq!((r.sent[1], r.received[0]), ([1, 0], [0, 1]));
        assert_eq!(
            Retransmissions::labelled(&r.received)
                .into_iter()
                .filter(|(_, _, n)| *n > 0)
                .collect::<Vec<_>>(),
            vec![("INVITE", "response", 1)]
        );
    }
}
