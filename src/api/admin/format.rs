//! How the dashboard writes times and durations (UTC, no locale).

/// `HH:MM` UTC of a unix-millisecond time.
pub(super) fn clock(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub(super) fn date_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `3.2 s` under a minute, `2m 05s` above.
pub(super) fn seconds(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A time bucket's length: `5 min` or `30 s`.
pub(super) fn bucket(bucket_ms: i64) -> String {
    if bucket_ms >= 60_000 {
        format!("{} min", bucket_ms / 60_000)
    } else {
        format!("{} s", bucket_ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(clock(3_600_000 + 5 * 60_000 + 59_000), "01:05");
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(seconds(3_240), "3.2 s");
        assert_eq!(seconds(125_000), "2m 05s");
        assert_eq!(bucket(300_000), "5 min");
        assert_eq!(bucket(30_000), "30 s");
    }
}
