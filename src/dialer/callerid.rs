//! Caller IDs by destination (`[[caller_ids]]`, SPEC §7): which number a call shows,
//! and when a number is rested. Pure: the pool's figures and the rotation turn are
//! passed in; the dialer reads and writes them (`store::routing`).

use super::routing::RouteStats;

/// The caller ID for the `turn`-th call of a pool: the pool's numbers in rotation,
/// skipping those at rest. `None` when every number rests (the trunk's `from` is
/// then shown).
pub(super) fn choose<'a>(numbers: &'a [String], resting: &[String], turn: u64) -> Option<&'a str> {
    let awake: Vec<&String> = numbers.iter().filter(|n| !resting.contains(n)).collect();
    if awake.is_empty() {
        return None;
    }
    let i = (turn % awake.len() as u64) as usize;
    Some(awake[i].as_str())
}

/// Whether a number with `own` figures (calls that reached the callee, and of those
/// answered) must rest, in a pool whose numbers together have `pool`: once it has
/// `min_calls` calls, its answer rate below `rest_below` × the pool's. A pool that
/// nobody answers rests nobody: the numbers are not the problem then.
pub(super) fn should_rest(
    own: RouteStats,
    pool: RouteStats,
    rest_below: f64,
    min_calls: u32,
) -> bool {
    own.calls >= u64::from(min_calls)
        && pool.answered > 0
        && own.answer_rate() < rest_below * pool.answer_rate()
}

/// `sip:USER@host…` with USER replaced by `caller_id` (a trunk's `from` with the
/// pool's number); `None` when `from` has no user part to replace.
pub(super) fn from_with_caller_id(from: &str, caller_id: &str) -> Option<String> {
    let (scheme, rest) = from.split_once(':')?;
    let (_, host) = rest.split_once('@')?;
    Some(format!("{scheme}:{caller_id}@{host}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(calls: u64, answered: u64) -> RouteStats {
        RouteStats { calls, answered }
    }

    fn nums(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn numbers_rotate_and_resting_ones_are_skipped() {
        let pool = nums(&["+31508200000", "+31508200001", "+31508200002"]);
        let shown: Vec<&str> = (0..6).map(|t| choose(&pool, &[], t).unwrap()).collect();
        assert_eq!(
            shown,
            [
                "+31508200000",
                "+31508200001",
                "+31508200002",
                "+31508200000",
                "+31508200001",
                "+31508200002"
            ]
        );
        let resting = nums(&["+31508200001"]);
        let shown: Vec<&str> = (0..4)
            .map(|t| choose(&pool, &resting, t).unwrap())
            .collect();
        assert_eq!(
            shown,
            [
                "+31508200000",
                "+31508200002",
                "+31508200000",
                "+31508200002"
            ]
        );
        assert_eq!(
            choose(&pool, &pool, 0),
            None,
            "all resting: the trunk's from"
        );
    }

    #[test]
    fn a_number_well_below_its_pool_rests_once_it_has_enough_calls() {
        // Pool 60 % answered; 0 of 5 is below half of that.
        assert!(should_rest(s(5, 0), s(20, 12), 0.5, 5));
        assert!(!should_rest(s(4, 0), s(20, 12), 0.5, 5), "too few calls");
        // 2 of 5 = 40 % is not below 30 %.
        assert!(!should_rest(s(5, 2), s(20, 12), 0.5, 5));
        assert!(should_rest(s(10, 2), s(20, 12), 0.5, 5), "20 % < 30 %");
        assert!(!should_rest(s(10, 0), s(30, 0), 0.5, 5), "nobody answers");
        assert!(
            !should_rest(s(10, 0), s(30, 3), 0.0, 5),
            "rest_below 0: never"
        );
    }

    #[test]
    fn the_caller_id_replaces_the_user_of_from() {
        assert_eq!(
            from_with_caller_id(
                "sip:+31508200000@sip.example:5060;transport=udp",
                "+31201234567"
            )
            .as_deref(),
            Some("sip:+31201234567@sip.example:5060;transport=udp")
        );
        assert_eq!(from_with_caller_id("sip:sip.example", "+312"), None);
    }
}
