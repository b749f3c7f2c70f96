//! Durations and sizes as flags and policy files write them.

use std::time::Duration;

/// The longest duration toolgate accepts anywhere (flags, policies, the admin API): 100 years.
/// Longer ones would overflow a clock's arithmetic; none is meant.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses durations such as `10s`, `5m`, `1h`, `2d`, `250ms`, up to [`MAX_DURATION_SECS`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 5m, 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    if secs > MAX_DURATION_SECS as f64 {
        return Err(format!("{s:?} is too long (at most 36500d)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a duration"))
}

/// Parses sizes such as `64MiB`, `512KiB`, `8GiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A lifetime such as `15m`: its whole seconds when from 1 s to `max_secs`.
pub fn lifetime_secs(s: &str, max_secs: u64) -> Option<u64> {
    parse_duration(s)
        .ok()
        .map(|d| d.as_secs())
        .filter(|secs| (1..=max_secs).contains(secs))
}

/// What a job id may be: 1 to 128 characters of letters, digits and `- _ . : / @`.
pub const JOB_ID_RULE: &str = "1 to 128 characters of letters, digits and - _ . : / @";

/// Whether `job` is a job id ([`JOB_ID_RULE`]).
pub fn job_id_ok(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= 128
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overlong_durations_are_errors_not_panics() {
        for s in [
            "99999999999999999999999d",
            "1e400s",
            "18446744073709551616s",
            "36501d",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(lifetime_secs("99999999999999999999999d", 7 * 86_400), None);
        assert_eq!(
            parse_duration("36500d").unwrap().as_secs(),
            MAX_DURATION_SECS
        );
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_within_the_bound(s in "\\PC{0,40}", n in any::<u64>(), unit in "(ms|s|m|h|d|)") {
            for text in [s, format!("{n}{unit}"), format!("{n}.{n}{unit}")] {
                if let Ok(d) = parse_duration(&text) {
                    prop_assert!(d.as_secs() <= MAX_DURATION_SECS);
                }
                let _ = parse_size(&text);
            }
        }
    }
}
