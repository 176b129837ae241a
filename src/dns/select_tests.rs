use super::*;

fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
    SrvRecord {
        priority,
        weight,
        port: 5060,
        target: target.into(),
    }
}

fn targets(records: &[SrvRecord]) -> Vec<&str> {
    records.iter().map(|r| r.target.as_str()).collect()
}

/// A `pick` that answers from a fixed list (and checks the bound it was given).
fn scripted(answers: &[u32]) -> impl FnMut(u32) -> u32 + '_ {
    let mut i = 0;
    move |max| {
        let n = answers[i % answers.len()];
        i += 1;
        assert!(n <= max, "scripted pick {n} above {max}");
        n
    }
}

#[test]
fn literal_addresses_and_explicit_ports_skip_srv() {
    let t: SipTarget = "sip:[::1]".parse().unwrap();
    assert_eq!(
        first_step(&t),
        Step::Literal("[::1]:5060".parse().unwrap(), Transport::Udp)
    );
    let t: SipTarget = "sip:192.0.2.7;transport=tcp".parse().unwrap();
    assert_eq!(
        first_step(&t),
        Step::Literal("192.0.2.7:5060".parse().unwrap(), Transport::Tcp)
    );
    let t: SipTarget = "sip:Sip.Carrier.Example:5080".parse().unwrap();
    assert_eq!(
        first_step(&t),
        Step::Host {
            name: "sip.carrier.example".into(),
            port: 5080,
            transport: Transport::Udp
        }
    );
}

#[test]
fn a_transport_parameter_asks_for_that_srv_only_and_a_bare_name_for_naptr() {
    let t: SipTarget = "sip:carrier.example;transport=tls".parse().unwrap();
    assert_eq!(
        first_step(&t),
        Step::Srv {
            name: "carrier.example".into(),
            transport: Transport::Tls
        }
    );
    let t: SipTarget = "sip:carrier.example".parse().unwrap();
    assert_eq!(
        first_step(&t),
        Step::Naptr {
            name: "carrier.example".into()
        }
    );
    assert_eq!(srv_name(Transport::Udp, "c.example"), "_sip._udp.c.example");
    assert_eq!(srv_name(Transport::Tcp, "c.example"), "_sip._tcp.c.example");
    assert_eq!(
        srv_name(Transport::Tls, "c.example"),
        "_sips._tcp.c.example"
    );
}

fn naptr(order: u16, preference: u16, flags: &str, service: &str, to: &str) -> NaptrRecord {
    NaptrRecord {
        order,
        preference,
        flags: flags.into(),
        service: service.into(),
        replacement: to.into(),
    }
}

#[test]
fn naptr_records_are_used_by_order_then_preference_and_only_for_our_services() {
    let records = [
        naptr(20, 10, "s", "SIP+D2U", "_sip._udp.c.example"),
        naptr(10, 50, "S", "SIPS+D2T", "_sips._tcp.c.example"),
        naptr(10, 10, "s", "SIP+D2T", "_sip._tcp.c.example"),
        naptr(5, 10, "s", "SIP+D2S", "_sip._sctp.c.example"),
        naptr(5, 10, "u", "E2U+sip", "_sip._udp.c.example"),
        naptr(5, 20, "s", "SIP+D2U", "."),
    ];
    let got: Vec<(Transport, String)> = naptr_srv_names(&records)
        .into_iter()
        .map(|(t, r)| (t, r.replacement))
        .collect();
    assert_eq!(
        got,
        vec![
            (Transport::Tcp, "_sip._tcp.c.example".to_string()),
            (Transport::Tls, "_sips._tcp.c.example".to_string()),
            (Transport::Udp, "_sip._udp.c.example".to_string()),
        ]
    );
    assert!(naptr_srv_names(&[]).is_empty());
}

#[test]
fn srv_priority_decides_before_weight() {
    let records = [srv(20, 100, "b"), srv(10, 1, "a"), srv(30, 0, "c")];
    // Whatever the random numbers, the lower priority comes first.
    for n in 0..=100 {
        let ordered = order_srv(&records, &mut |max: u32| n.min(max));
        assert_eq!(targets(&ordered), ["a", "b", "c"], "pick {n}");
    }
}

#[test]
fn a_single_record_is_itself_and_a_dot_target_means_no_service() {
    let one = [srv(10, 0, "only")];
    assert_eq!(targets(&order_srv(&one, &mut scripted(&[0]))), ["only"]);
    let none = [srv(0, 0, ".")];
    assert!(order_srv(&none, &mut scripted(&[0])).is_empty());
    assert!(order_srv(&[], &mut scripted(&[0])).is_empty());
}

/// How often each target is tried first over every value `pick` can return.
fn first_counts(records: &[SrvRecord]) -> Vec<(String, usize)> {
    let total: u32 = records.iter().map(|r| u32::from(r.weight)).sum();
    let mut counts: Vec<(String, usize)> = records.iter().map(|r| (r.target.clone(), 0)).collect();
    for n in 0..=total {
        let mut first = true;
        let ordered = order_srv(records, &mut |max: u32| {
            // The first draw is `n`; later draws (for the rest of the list) 0.
            let v = if first { n } else { 0 };
            first = false;
            v.min(max)
        });
        assert_eq!(ordered.len(), records.len(), "every record is kept");
        let slot = counts
            .iter_mut()
            .find(|(t, _)| *t == ordered[0].target)
            .unwrap();
        slot.1 += 1;
    }
    counts
}

#[test]
fn weights_share_the_first_place_as_rfc_2782_says() {
    // Running sums 1 and 4 over a draw in 0..=4: "a" for 0 and 1, "b" for 2, 3, 4.
    let counts = first_counts(&[srv(10, 1, "a"), srv(10, 3, "b")]);
    assert_eq!(counts, [("a".into(), 2), ("b".into(), 3)]);
    // Equal weights: a draw of 0..=5 picks the first, 6..=10 the second.
    let counts = first_counts(&[srv(10, 5, "a"), srv(10, 5, "b")]);
    assert_eq!(counts, [("a".into(), 6), ("b".into(), 5)]);
}

#[test]
fn weight_zero_goes_first_only_on_a_zero_draw() {
    let records = [srv(10, 10, "heavy"), srv(10, 0, "zero")];
    let counts = first_counts(&records);
    assert_eq!(counts, [("heavy".into(), 10), ("zero".into(), 1)]);
    // When the draw is not 0 the zero-weight record still follows (it is kept).
    let ordered = order_srv(&records, &mut scripted(&[7, 0]));
    assert_eq!(targets(&ordered), ["heavy", "zero"]);
    // All weights 0: the DNS order stands.
    let zeros = [srv(10, 0, "x"), srv(10, 0, "y"), srv(10, 0, "z")];
    assert_eq!(
        targets(&order_srv(&zeros, &mut scripted(&[0]))),
        ["x", "y", "z"]
    );
}

#[test]
fn the_draw_is_bounded_by_the_weights_left() {
    // After "b" (weight 3) is taken only "a" (weight 1) is left: the second draw is
    // asked for 0..=1, not 0..=4 (scripted() checks the bound).
    let ordered = order_srv(&[srv(1, 1, "a"), srv(1, 3, "b")], &mut scripted(&[4, 1]));
    assert_eq!(targets(&ordered), ["b", "a"]);
}

#[test]
fn addresses_keep_a_stable_dual_stack_order() {
    let ips: Vec<IpAddr> = ["::1", "127.0.0.2", "2001:db8::1", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let got: Vec<String> = stable_addresses(ips)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["127.0.0.2", "127.0.0.1", "::1", "2001:db8::1"]);
}

#[test]
fn a_listener_reaches_its_own_family_and_the_v6_wildcard_both() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(reachable_from(ip("127.0.0.1"), ip("192.0.2.1")));
    assert!(reachable_from(ip("0.0.0.0"), ip("192.0.2.1")));
    assert!(!reachable_from(ip("0.0.0.0"), ip("::1")));
    assert!(!reachable_from(ip("::1"), ip("127.0.0.1")));
    assert!(reachable_from(ip("::1"), ip("2001:db8::1")));
    assert!(reachable_from(ip("::"), ip("127.0.0.1")));
    assert!(reachable_from(ip("::"), ip("::1")));
}
