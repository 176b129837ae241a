//! Routing by measured quality (`[dialer] routing = "quality"`, SPEC §7): which of the
//! trunks that carry a number is tried first. Pure: the answer rates, costs and the
//! random draw are passed in, so unit tests drive every case without a network.
//!
//! The rule: among usable trunks, the best recent answer rate for the destination
//! country wins; trunks within [`NEAR_TIE`] of the best count as equal and the
//! cheapest of them (then the lower `priority`) goes first. A share of calls
//! (`explore_share`) goes to another usable trunk instead, so that a trunk that was
//! bad and recovered is noticed. Trunks that are down stay at the end by priority,
//! as with `routing = "priority"`.

/// Answer rates closer than this to the best count as equal (cost decides).
pub(super) const NEAR_TIE: f64 = 0.05;

/// What a trunk achieved for one destination country over the recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub calls: u64,
    pub answered: u64,
}

impl RouteStats {
    /// The answer rate as measured (0 without calls), for display.
    pub fn answer_rate(self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.answered as f64 / self.calls as f64
        }
    }

    /// The rate routing compares: Laplace-smoothed, so that a trunk with one lucky
    /// call does not beat one with a hundred good ones, and an unknown trunk sits at
    /// one half.
    pub fn score(self) -> f64 {
        (self.answered as f64 + 1.0) / (self.calls as f64 + 2.0)
    }
}

/// One trunk that carries the number.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    /// Registered when it must be, not known unreachable, breaker not open.
    pub usable: bool,
    pub priority: u32,
    pub cost_per_minute: f64,
    pub stats: RouteStats,
}

/// The order to try `candidates` in. `draw` is uniform in `[0, 1)`: below
/// `explore_share` the call explores (another usable trunk first, chosen by the same
/// draw).
pub fn order_by_quality(candidates: &[Candidate], draw: f64, explore_share: f64) -> Vec<String> {
    let by_priority = |a: &&Candidate, b: &&Candidate| a.priority.cmp(&b.priority);
    let mut usable: Vec<&Candidate> = candidates.iter().filter(|c| c.usable).collect();
    let mut down: Vec<&Candidate> = candidates.iter().filter(|c| !c.usable).collect();
    down.sort_by(by_priority);
    // Best score first; exact order among the rest matters only for failover.
    usable.sort_by(|a, b| {
        b.stats
            .score()
            .total_cmp(&a.stats.score())
            .then(a.cost_per_minute.total_cmp(&b.cost_per_minute))
            .then(a.priority.cmp(&b.priority))
    });
    if let Some(best) = usable.first().map(|c| c.stats.score()) {
        // The near-tie group at the top goes cheapest first.
        let ties = usable
            .iter()
            .take_while(|c| best - c.stats.score() < NEAR_TIE)
            .count();
        usable[..ties].sort_by(|a, b| {
            a.cost_per_minute
                .total_cmp(&b.cost_per_minute)
                .then(b.stats.score().total_cmp(&a.stats.score()))
                .then(a.priority.cmp(&b.priority))
        });
    }
    if usable.len() > 1 && draw < explore_share {
        // Which other trunk: the draw rescaled over the exploring share.
        let others = usable.len() - 1;
        let pick = 1 + ((draw / explore_share) * others as f64).floor() as usize;
        let explored = usable.remove(pick.min(others));
        usable.insert(0, explored);
    }
    usable
        .into_iter()
        .chain(down)
        .map(|c| c.name.clone())
        .collect()
}

/// Draws spread evenly over `[0, 1)` (the golden-ratio sequence): any run of `n`
/// calls explores `n × share` times give or take one, where independent random draws
/// would now and then send a whole run the wrong way. Shared by the calls of one
/// dialer.
#[derive(Debug, Default)]
pub struct EvenDraws {
    next: std::sync::atomic::AtomicU64,
}

impl EvenDraws {
    /// A sequence starting at a random point (instances do not explore in step).
    pub fn new() -> EvenDraws {
        EvenDraws {
            next: std::sync::atomic::AtomicU64::new(rand::random::<u32>().into()),
        }
    }

    pub fn draw(&self) -> f64 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        golden(n)
    }
}

/// The `n`-th draw of the golden-ratio sequence.
fn golden(n: u64) -> f64 {
    const PHI_FRAC: f64 = 0.618_033_988_749_894_9;
    ((n % (1 << 40)) as f64 * PHI_FRAC).fract()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(name: &str, calls: u64, answered: u64, cost: f64) -> Candidate {
        Candidate {
            name: name.into(),
            usable: true,
            priority: 10,
            cost_per_minute: cost,
            stats: RouteStats { calls, answered },
        }
    }

    #[test]
    fn the_better_answer_rate_goes_first() {
        let t = [c("a", 30, 10, 0.0), c("b", 30, 30, 0.0)];
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["b", "a"]);
    }

    #[test]
    fn near_ties_go_to_the_cheaper_trunk() {
        let t = [c("dear", 100, 90, 0.02), c("cheap", 100, 88, 0.01)];
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["cheap", "dear"]);
        // Not near: quality beats price.
        let t = [c("dear", 100, 90, 0.02), c("cheap", 100, 60, 0.01)];
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["dear", "cheap"]);
    }

    #[test]
    fn unknown_trunks_start_even_and_one_lucky_call_does_not_win() {
        let t = [c("proven", 100, 80, 0.0), c("new", 1, 1, 0.0)];
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["proven", "new"]);
        let t = [c("a", 0, 0, 0.02), c("b", 0, 0, 0.01)];
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["b", "a"], "no data: cost");
        let mut t = [c("a", 0, 0, 0.0), c("b", 0, 0, 0.0)];
        t[0].priority = 20;
        assert_eq!(order_by_quality(&t, 0.9, 0.05), ["b", "a"], "then priority");
    }

    #[test]
    fn exploration_puts_another_usable_trunk_first() {
        let t = [c("a", 30, 30, 0.0), c("b", 30, 10, 0.0), c("x", 30, 5, 0.0)];
        assert_eq!(order_by_quality(&t, 0.01, 0.05), ["b", "a", "x"]);
        assert_eq!(order_by_quality(&t, 0.03, 0.05), ["x", "a", "b"]);
        assert_eq!(order_by_quality(&t, 0.05, 0.05), ["a", "b", "x"]);
        assert_eq!(order_by_quality(&t, 0.01, 0.0), ["a", "b", "x"], "share 0");
        assert_eq!(
            order_by_quality(&t[..1], 0.0, 0.05),
            ["a"],
            "nothing to explore"
        );
    }

    #[test]
    fn down_trunks_stay_last_and_are_never_explored() {
        let mut t = [c("down", 30, 30, 0.0), c("up", 30, 3, 0.0)];
        t[0].usable = false;
        assert_eq!(order_by_quality(&t, 0.0, 0.05), ["up", "down"]);
    }

    #[test]
    fn even_draws_explore_their_share_in_every_window() {
        for start in [0u64, 7, 1000, 123_456_789] {
            let explored: Vec<bool> = (start..start + 600).map(|n| golden(n) < 0.05).collect();
            for w in explored.windows(30) {
                let n = w.iter().filter(|e| **e).count();
                assert!(n <= 2, "{n} explorations in 30 from {start}");
            }
            for w in explored.windows(200) {
                let n = w.iter().filter(|e| **e).count();
                assert!(
                    (9..=12).contains(&n),
                    "{n} explorations in 200 from {start}"
                );
            }
        }
    }

    #[test]
    fn the_answer_rate_is_as_measured() {
        let s = RouteStats {
            calls: 4,
            answered: 1,
        };
        assert_eq!(s.answer_rate(), 0.25);
        assert_eq!(RouteStats::default().answer_rate(), 0.0);
        assert!((RouteStats::default().score() - 0.5).abs() < 1e-12);
    }
}
