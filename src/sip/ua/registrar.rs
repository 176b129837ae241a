//! The QA registrar (SPEC §6 `[[qa.phones]]`): softphones REGISTER with digest auth
//! (RFC 3261 §10.3, RFC 7616 as a server), and we keep one binding per account with its
//! expiry, fixed to the address and transport the REGISTER came from (NAT-safe: the
//! phone is called where its REGISTER came from, not at a private Contact address).
//! Failed authentications are reported to the listener policy, which bans a source
//! after `ban_after_failures`. Sans-IO: time comes in as `now`.

use super::*;
use crate::sip::digest;
use crate::sip::grammar;
use crate::sip::{QaBinding, RegistrarConfig};

/// How long a nonce we issued stays good; an answer to an older one gets `stale=true`.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Most nonces kept at once (each challenge issues one); older ones are forgotten first.
const MAX_NONCES: usize = 10_000;
/// Lifetime when the REGISTER asks for none (RFC 3261 §10.2.1.1 suggests 3600).
const DEFAULT_EXPIRES: u32 = 3600;

/// Contact and Expires of a 200: the binding's Contact with the time left (not the
/// lifetime granted: a query 83 s after a 600 s registration hears 517, RFC 3261 §10.3
/// step 8) and its RFC 5626 instance and reg-id echoed.
fn ok_headers(b: &QaBinding, now: Instant) -> Vec<Header> {
    let left = seconds_left(b, now);
    let mut contact = format!("<{}>;expires={left}", b.contact);
    if let Some(instance) = &b.instance {
        contact.push_str(&format!(";+sip.instance={}", grammar::quote(instance)));
    }
    if let Some(reg_id) = b.reg_id {
        contact.push_str(&format!(";reg-id={reg_id}"));
    }
    vec![
        h::Contact::new(contact).into(),
        h::Expires::new(left.to_string()).into(),
    ]
}

/// Whole seconds until `b` runs out, rounded up (a binding with 0.4 s left is alive).
fn seconds_left(b: &QaBinding, now: Instant) -> u64 {
    let left = b.expires_at.saturating_duration_since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

#[derive(Debug)]
pub(super) struct Registrar {
    config: RegistrarConfig,
    bindings: HashMap<String, QaBinding>,
    /// Nonces issued and when.
    nonces: HashMap<String, Instant>,
}

/// What a REGISTER gets.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 401 with a fresh challenge; `failed` = the credentials were wrong (counts toward
    /// a ban).
    Challenge { stale: bool, failed: bool },
    /// 423 Interval Too Brief.
    TooBrief,
    /// 400: a Contact we cannot call, or `*` without `Expires: 0`.
    Bad(&'static str),
    /// 200: the binding as it now is (None: none), changed by this REGISTER.
    Ok(Option<QaBinding>),
    /// 200 to a query, or to an un-REGISTER of a binding that is gone already: the
    /// binding as it is, nothing changed.
    Unchanged(Option<QaBinding>),
}

impl Registrar {
    pub(super) fn new(config: RegistrarConfig) -> Self {
        Registrar {
            config,
            bindings: HashMap::new(),
            nonces: HashMap::new(),
        }
    }

    fn new_nonce(&mut self, now: Instant) -> String {
        if self.nonces.len() >= MAX_NONCES {
            self.nonces
                .retain(|_, issued| now.duration_since(*issued) < NONCE_LIFETIME);
            if self.nonces.len() >= MAX_NONCES {
                // Still full of live nonces (a flood of challenges): forget them all;
                // honest phones get stale=true and answer the next one.
                self.nonces.clear();
            }
        }
        let nonce = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        self.nonces.insert(nonce.clone(), now);
        nonce
    }

    /// Whether `from` is where a registered phone's REGISTER came from (same IP).
    pub(super) fn is_registered_source(&self, now: Instant, from: SocketAddr) -> bool {
        self.bindings
            .values()
            .any(|b| b.source.ip() == from.ip() && b.expires_at > now && !b.flow_closed)
    }

    /// The connection from `peer` closed: bindings that came on it can no longer be
    /// reached (RFC 5626 §5.3: a failed flow is not used again). The usernames, and the
    /// bindings as they now are.
    pub(super) fn flow_closed(&mut self, peer: SocketAddr) -> Vec<(String, QaBinding)> {
        let mut changed = Vec::new();
        for (user, b) in &mut self.bindings {
            if b.source == peer && b.transport.is_reliable() && !b.flow_closed {
                b.flow_closed = true;
                changed.push((user.clone(), b.clone()));
            }
        }
        changed
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.bindings.values().map(|b| b.expires_at).min()
    }

    /// Bindings whose time is up, removed.
    fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires_at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        for u in &gone {
            self.bindings.remove(u);
        }
        gone
    }

    /// Decides on one REGISTER from `from` over `transport`.
    fn register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        transport: Transport,
        msg: &Message,
    ) -> (Answer, Option<String>) {
        let Some(value) = msg.authorization.as_deref() else {
            return (
                Answer::Challenge {
                    stale: false,
                    failed: false,
                },
                None,
            );
        };
        let refused = |user: Option<String>| {
            (
                Answer::Challenge {
                    stale: false,
                    failed: true,
                },
                user,
            )
        };
        let Ok(auth) = digest::Authorization::parse(value) else {
            return refused(None);
        };
        let user = Some(auth.username.clone());
        // Unknown user and wrong password look the same from outside.
        let Some(account) = self
            .config
            .accounts
            .iter()
            .find(|a| a.username == auth.username)
        else {
            return refused(user);
        };
        if auth.realm != self.config.realm || !auth.verify(&account.password, "REGISTER", b"") {
            return refused(user);
        }
        let fresh = self
            .nonces
            .get(&auth.nonce)
            .is_some_and(|issued| now.duration_since(*issued) < NONCE_LIFETIME);
        if !fresh {
            // Right password, old nonce: ask again without counting a failure.
            return (
                Answer::Challenge {
                    stale: true,
                    failed: false,
                },
                user,
            );
        }
        let username = auth.username;
        if msg.contacts.is_empty() {
            // A query: the current binding.
            let current = self.bindings.get(&username).cloned();
            return (Answer::Unchanged(current), Some(username));
        }
        if msg.contacts.iter().any(|c| c.trim() == "*") {
            if msg.expires != Some(0) || msg.contacts.len() != 1 {
                return (Answer::Bad("Contact * needs Expires: 0"), Some(username));
            }
            self.bindings.remove(&username);
            return (Answer::Ok(None), Some(username));
        }
        let contact = &msg.contacts[0];
        let asked = message::addr_param(contact, "expires")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .or(msg.expires)
            .unwrap_or(DEFAULT_EXPIRES);
        let uri = message::addr_uri(contact);
        let instance = message::addr_param(contact, "+sip.instance");
        if asked == 0 {
            // Only the binding this REGISTER names goes: a phone that restarted on a new
            // port and registered again is not removed by its old self signing off.
            let same =
                self.bindings
                    .get(&username)
                    .is_some_and(|b| match (&b.instance, &instance) {
                        (Some(a), Some(b)) => a == b,
                        _ => b.contact == uri,
                    });
            if !same {
                let current = self.bindings.get(&username).cloned();
                return (Answer::Unchanged(current), Some(username));
            }
            self.bindings.remove(&username);
            return (Answer::Ok(None), Some(username));
        }
        if asked < self.config.min_expires {
            return (Answer::TooBrief, Some(username));
        }
        if parse_sip_uri(uri).is_err() {
            return (Answer::Bad("Contact is not a sip: URI"), Some(username));
        }
        let expires = asked.min(self.config.max_expires);
        // One binding per account: a REGISTER from a new address, port or connection
        // (the same instance restarted, or another phone) replaces the old one.
        let binding = QaBinding {
            contact: uri.to_string(),
            source: from,
            transport,
            instance,
            reg_id: message::addr_param(contact, "reg-id").and_then(|v| v.parse().ok()),
            flow_closed: false,
            expires,
            expires_at: now + Duration::from_secs(u64::from(expires)),
        };
        self.bindings.insert(username.clone(), binding.clone());
        (Answer::Ok(Some(binding)), Some(username))
    }
}

impl UserAgent {
    /// Answers a REGISTER to the QA registrar: the status and the headers to add.
    /// `None`: send nothing (the source got banned by this failure).
    pub(super) fn on_register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Message,
    ) -> Option<(u16, Vec<Header>)> {
        let transport = self.transport_to(from);
        let registrar = self.registrar.as_mut()?;
        let (answer, username) = registrar.register(now, from, transport, msg);
        let changed = matches!(answer, Answer::Ok(_));
        let realm = registrar.config.realm.clone();
        let min_expires = registrar.config.min_expires;
        match answer {
            Answer::Challenge { stale, failed } => {
                if failed {
                    debug!(%from, user = ?username, "QA registrar: authentication failed");
                    self.events.push_back(Event::QaAuthFailed {
                        username: username.unwrap_or_default(),
                    });
                    if self.policy.failure(now, from.ip()) {
                        return None;
                    }
                }
                let nonce = self.registrar.as_mut()?.new_nonce(now);
                let value = digest::server_challenge(&realm, &nonce, stale);
                Some((401, vec![h::WwwAuthenticate::new(value).into()]))
            }
            Answer::TooBrief => Some((
                423,
                vec![h::MinExpires::new(min_expires.to_string()).into()],
            )),
            Answer::Bad(why) => Some((
                400,
                vec![h::Warning::new(format!("399 - \"{why}\"")).into()],
            )),
            Answer::Ok(binding) | Answer::Unchanged(binding) => {
                self.policy.success(from.ip());
                let extra = binding
                    .as_ref()
                    .map(|b| ok_headers(b, now))
                    .unwrap_or_default();
                if changed {
                    let username = username.unwrap_or_default();
                    debug!(%from, user = %username, registered = binding.is_some(), "QA registrar: binding updated");
                    self.events
                        .push_back(Event::QaRegistration { username, binding });
                }
                Some((200, extra))
            }
        }
    }

    /// Forgets QA bindings that ran out, telling the application.
    pub(super) fn registrar_timers(&mut self, now: Instant) {
        let Some(r) = self.registrar.as_mut() else {
            return;
        };
        for username in r.expire(now) {
            debug!(user = %username, "QA registrar: binding expired");
            self.events.push_back(Event::QaRegistration {
                username,
                binding: None,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::QaAccount;

    const PHONE: &str = "127.0.0.44:5062";

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig {
            realm: "otpdial-qa".into(),
            accounts: vec![QaAccount {
                username: "qa-alice".into(),
                password: "pw-alice".into(),
            }],
            min_expires: 60,
            max_expires: 3600,
        })
    }

    fn register(contact: &str, expires: Option<u32>, auth: Option<String>) -> Message {
        let mut text = String::from(
            "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bKr;rport\r\n\
             From: <sip:qa-alice@127.0.0.1>;tag=a\r\nTo: <sip:qa-alice@127.0.0.1>\r\n\
             Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n",
        );
        if !contact.is_empty() {
            text.push_str(&format!("Contact: {contact}\r\n"));
        }
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = auth {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        message::parse(text.as_bytes()).unwrap()
    }

    fn answer_to(nonce: &str, user: &str, password: &str) -> String {
        let ch = digest::Challenge::parse(&digest::server_challenge("otpdial-qa", nonce, false))
            .unwrap();
        digest::answer(
            &ch,
            &digest::Credentials {
                username: user.into(),
                password: password.into(),
            },
            digest::RequestParts {
                method: "REGISTER",
                uri: "sip:127.0.0.1:5060",
                body: b"",
            },
            1,
            "cn",
        )
    }

    fn challenge(r: &mut Registrar, now: Instant) -> String {
        r.new_nonce(now)
    }

    #[test]
    fn register_is_challenged_then_bound_to_its_source() {
        let now = Instant::now();
        let mut r = registrar();
        let from: SocketAddr = PHONE.parse().unwrap();
        let contact = "<sip:qa-alice@192.168.1.20:5062;transport=udp>";
        let (a, _) = r.register(now, from, Transport::Udp, &register(contact, None, None));
        assert_eq!(
            a,
            Answer::Challenge {
                stale: false,
                failed: false
            }
        );
        let nonce = challenge(&mut r, now);
        let auth = answer_to(&nonce, "qa-alice", "pw-alice");
        let (a, user) = r.register(
            now,
            from,
            Transport::Udp,
            &register(contact, Some(7200), Some(auth)),
        );
        let Answer::Ok(Some(b)) = a else {
            panic!("{a:?}")
        };
        assert_eq!(user.as_deref(), Some("qa-alice"));
        assert_eq!(b.contact, "sip:qa-alice@192.168.1.20:5062;transport=udp");
        assert_eq!(b.source, from, "the NAT's address, not the private Contact");
        assert_eq!(b.expires, 3600, "capped at max_expires");
        assert!(r.is_registered_source(now, "127.0.0.44:9999".parse().unwrap()));
        assert!(!r.is_registered_source(now, "127.0.0.45:5062".parse().unwrap()));
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(3600)));
        assert!(r.expire(now + Duration::from_secs(3599)).is_empty());
        assert_eq!(r.expire(now + Duration::from_secs(3600)), vec!["qa-alice"]);
        assert!(!r.is_registered_source(now, from));
    }

    #[test]
    fn wrong_password_and_unknown_user_look_the_same() {
        let now = Instant::now();
        let mut r = registrar();
        let from: SocketAddr = PHONE.parse().unwrap();
        for (user, pw) in [("qa-alice", "guess"), ("qa-bob", "pw-alice")] {
            let nonce = challenge(&mut r, now);
            let msg = register("<sip:x@1.2.3.4>", None, Some(answer_to(&nonce, user, pw)));
            let (a, _) = r.register(now, from, Transport::Udp, &msg);
            assert_eq!(
                a,
                Answer::Challenge {
                    stale: false,
                    failed: true
                },
                "{user}"
            );
        }
        let msg = register("<sip:x@1.2.3.4>", None, Some("Digest garbage".into()));
        assert!(matches!(
            r.register(now, from, Transport::Udp, &msg).0,
            Answer::Challenge { failed: true, .. }
        ));
    }

    #[test]
    fn old_or_unknown_nonce_with_the_right_password_is_stale_not_a_failure() {
        let now = Instant::now();
        let mut r = registrar();
        let from: SocketAddr = PHONE.parse().unwrap();
        let nonce = challenge(&mut r, now);
        let msg = register(
            "<sip:x@1.2.3.4>",
            None,
            Some(answer_to(&nonce, "qa-alice", "pw-alice")),
        );
        let later = now + NONCE_LIFETIME;
        assert_eq!(
            r.register(later, from, Transport::Udp, &msg).0,
            Answer::Challenge {
                stale: true,
                failed: false
            }
        );
        let msg = register(
            "<sip:x@1.2.3.4>",
            None,
            Some(answer_to("never-issued", "qa-alice", "pw-alice")),
        );
        assert!(matches!(
            r.register(now, from, Transport::Udp, &msg).0,
            Answer::Challenge { stale: true, .. }
        ));
    }

    #[test]
    fn expires_rules_unregister_and_star() {
        let now = Instant::now();
        let mut r = registrar();
        let from: SocketAddr = PHONE.parse().unwrap();
        let send = |r: &mut Registrar, contact: &str, expires: Option<u32>| {
            let nonce = challenge(r, now);
            let auth = answer_to(&nonce, "qa-alice", "pw-alice");
            r.register(
                now,
                from,
                Transport::Tcp,
                &register(contact, expires, Some(auth)),
            )
            .0
        };
        assert_eq!(send(&mut r, "<sip:a@1.2.3.4>", Some(30)), Answer::TooBrief);
        let Answer::Ok(Some(b)) = send(&mut r, "<sip:a@1.2.3.4>;expires=120", Some(30)) else {
            panic!("contact expires wins over the header")
        };
        assert_eq!((b.expires, b.transport), (120, Transport::Tcp));
        // A query returns the binding and changes nothing.
        assert!(matches!(send(&mut r, "", None), Answer::Unchanged(Some(_))));
        // An un-REGISTER of another Contact leaves this one alone.
        assert!(matches!(
            send(&mut r, "<sip:a@5.6.7.8>;expires=0", None),
            Answer::Unchanged(Some(_))
        ));
        assert_eq!(
            send(&mut r, "<sip:a@1.2.3.4>;expires=0", None),
            Answer::Ok(None)
        );
        assert!(!r.is_registered_source(now, from));
        send(&mut r, "<sip:a@1.2.3.4>", None);
        assert!(matches!(send(&mut r, "*", None), Answer::Bad(_)));
        assert_eq!(send(&mut r, "*", Some(0)), Answer::Ok(None));
        assert!(r.bindings.is_empty());
        assert!(matches!(send(&mut r, "<mailto:a@b>", None), Answer::Bad(_)));
    }

    /// Linphone restarted on another port (same `+sip.instance`, new source): its one
    /// binding moves there; another instance signing off leaves it alone; the closed
    /// connection of a TCP binding makes it unreachable.
    #[test]
    fn one_binding_follows_the_phone_and_its_flow() {
        let now = Instant::now();
        let mut r = registrar();
        let lp = |port: u16, expires: u32, instance: &str| {
            format!(
                "<sip:qa-alice@127.0.0.1:{port};transport=udp>;expires={expires};+sip.instance=\"<urn:uuid:{instance}>\";reg-id=1"
            )
        };
        let send = |r: &mut Registrar, from: &str, transport, contact: String| {
            let nonce = challenge(r, now);
            let auth = answer_to(&nonce, "qa-alice", "pw-alice");
            let from: SocketAddr = from.parse().unwrap();
            r.register(now, from, transport, &register(&contact, None, Some(auth)))
                .0
        };
        let Answer::Ok(Some(first)) = send(
            &mut r,
            "127.0.0.1:5072",
            Transport::Udp,
            lp(5072, 600, "aaaa"),
        ) else {
            panic!()
        };
        assert_eq!(first.instance.as_deref(), Some("<urn:uuid:aaaa>"));
        assert_eq!(first.reg_id, Some(1));
        let Answer::Ok(Some(moved)) = send(
            &mut r,
            "127.0.0.1:5080",
            Transport::Udp,
            lp(5080, 600, "aaaa"),
        ) else {
            panic!()
        };
        assert_eq!(moved.source.port(), 5080);
        assert_eq!(r.bindings.len(), 1);
        assert!(matches!(
            send(&mut r, "127.0.0.1:5090", Transport::Udp, lp(5090, 0, "bbbb")),
            Answer::Unchanged(Some(b)) if b.source.port() == 5080
        ));
        // Over TCP from an ephemeral port; the connection then closes.
        let Answer::Ok(Some(tcp)) = send(
            &mut r,
            "127.0.0.1:41000",
            Transport::Tcp,
            lp(5074, 600, "aaaa"),
        ) else {
            panic!()
        };
        assert!(!tcp.flow_closed);
        assert!(r.flow_closed("127.0.0.1:41001".parse().unwrap()).is_empty());
        let closed = r.flow_closed("127.0.0.1:41000".parse().unwrap());
        assert_eq!(closed.len(), 1);
        assert!(closed[0].1.flow_closed);
        assert!(!r.is_registered_source(now, "127.0.0.1:41000".parse().unwrap()));
        assert!(
            r.flow_closed("127.0.0.1:41000".parse().unwrap()).is_empty(),
            "once"
        );
    }
}
