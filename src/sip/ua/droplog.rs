//! Messages dropped as malformed are logged, but at most once per source address a
//! minute and a hundred lines a minute in all: QA and ops see why a phone does not
//! register, a flood does not fill the log. The line names the source and the parse
//! error, never the message (it may carry credentials); the drops themselves are all
//! counted (`otpdial_sip_dropped_total{reason="malformed"}`). Sans-IO: `now` comes in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a source stays quiet after its line.
pub(super) const QUIET: Duration = Duration::from_secs(60);
/// Lines per `QUIET` window across all sources.
const MAX_LINES: u32 = 100;
/// Sources remembered at once (a spoofed flood cannot grow the map without bound).
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct DropLog {
    last: HashMap<IpAddr, Instant>,
    window_start: Option<Instant>,
    lines: u32,
}

impl DropLog {
    /// Whether a malformed message from `source` at `now` gets a log line.
    pub(super) fn should_log(&mut self, now: Instant, source: IpAddr) -> bool {
        if self
            .last
            .get(&source)
            .is_some_and(|t| now.saturating_duration_since(*t) < QUIET)
        {
            return false;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < QUIET => {
                if self.lines >= MAX_LINES {
                    return false;
                }
            }
            _ => {
                self.window_start = Some(now);
                self.lines = 0;
            }
        }
        if self.last.len() >= MAX_SOURCES {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < QUIET);
            if self.last.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.last.insert(source, now);
        self.lines += 1;
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn once_per_source_per_minute() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(log.should_log(t0, a));
        assert!(!log.should_log(t0 + Duration::from_secs(1), a));
        assert!(!log.should_log(t0 + Duration::from_secs(59), a));
        assert!(log.should_log(t0 + Duration::from_secs(2), b));
        assert!(log.should_log(t0 + QUIET, a));
    }

    #[test]
    fn a_flood_from_many_sources_is_capped() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        let logged = (0..1000u32)
            .filter(|i| log.should_log(t0, IpAddr::from(i.to_be_bytes())))
            .count();
        assert_eq!(logged, MAX_LINES as usize);
        // The next window logs again.
        assert!(log.should_log(t0 + QUIET, IpAddr::from([10, 0, 0, 1])));
    }
}
