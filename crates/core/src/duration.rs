//! Durations a user gives refit (timeouts, pending budgets, gate expiries, after-stage waits):
//! one grammar and one range for all of them.
//!
//! Why a cap: every duration ends up added to a clock reading (`Instant`, `SystemTime`, a jiff
//! `Timestamp`), and those additions panic or wrap when the sum leaves the clock's range —
//! `--drain-timeout 5124095576030432h` did exactly that. No upgrade, wait or budget
//! meaningfully lasts longer than a year, so [`MAX`] (365 days) is refused at the edge with a
//! message, and the additions below saturate instead of panicking for values that got in some
//! other way (an older store, a hand-edited file).

use std::time::{Duration, Instant, SystemTime};

use jiff::{SignedDuration, Timestamp};

/// The longest duration refit accepts anywhere: 365 days.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// [`MAX_SECONDS`] as a [`Duration`].
pub const MAX: Duration = Duration::from_secs(MAX_SECONDS);

/// A duration that is not one refit accepts: the text as given and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}': {}", problem.reason())]
pub struct DurationError {
    /// The text (or the value, for durations that did not come as text).
    pub text: String,
    /// What is wrong.
    pub problem: DurationProblem,
}

/// What is wrong with a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationProblem {
    /// Digits with a unit that is not a fixed length (days, weeks) or no unit jiff knows.
    Unit,
    /// Not a duration at all.
    Shape,
    /// Zero.
    Zero,
    /// Shorter than a second (settings are stored in whole seconds).
    TooShort,
    /// Longer than [`MAX`].
    TooLong,
}

impl DurationProblem {
    /// What is wrong and how to fix it, without the value (clap prints the value itself).
    pub fn reason(self) -> &'static str {
        match self {
            DurationProblem::Unit => "the unit must be s, m or h (e.g. 300s, 10m, 1h30m)",
            DurationProblem::Shape => "expected a duration like 300s, 10m or 1h",
            DurationProblem::Zero => "must be longer than zero",
            DurationProblem::TooShort => "must be at least 1s",
            DurationProblem::TooLong => "must be at most one year (8760h)",
        }
    }
}

/// Parses `10m`, `300s`, `1h`, `1h30m` (jiff's friendly format), ISO 8601 (`PT10M`) or plain
/// seconds (`45`), between one second and [`MAX`].
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let parsed = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Plain seconds; more digits than a u64 holds is certainly too long.
        Some(s.parse::<u64>().map_or(Duration::MAX, Duration::from_secs))
    } else {
        s.parse::<SignedDuration>().ok().and_then(|d| {
            if d.is_negative() { None } else { Some(Duration::try_from(d).unwrap_or(Duration::MAX)) }
        })
    };
    let Some(d) = parsed else {
        let problem = if numbers_too_big(s) {
            DurationProblem::TooLong
        } else if s.starts_with(|c: char| c.is_ascii_digit()) {
            DurationProblem::Unit
        } else {
            DurationProblem::Shape
        };
        return Err(DurationError { text: s.to_string(), problem });
    };
    check(d).map_err(|e| DurationError { text: s.to_string(), ..e })
}

/// Whether `s` is a duration whose numbers are too big for jiff (it refuses what overflows its
/// range): the same text with every number made 1 parses.
fn numbers_too_big(s: &str) -> bool {
    let mut small = String::with_capacity(s.len());
    let mut in_number = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                small.push('1');
            }
            in_number = true;
        } else {
            small.push(c);
            in_number = false;
        }
    }
    small != s && small.parse::<SignedDuration>().is_ok_and(|d| !d.is_negative())
}

/// Checks a duration that came in some other way (a file, the store) against the range.
pub fn check(d: Duration) -> Result<Duration, DurationError> {
    let problem = if d.is_zero() {
        DurationProblem::Zero
    } else if d < Duration::from_secs(1) {
        DurationProblem::TooShort
    } else if d > MAX {
        DurationProblem::TooLong
    } else {
        return Ok(d);
    };
    Err(DurationError { text: show(d), problem })
}

/// Checks a count of seconds from a file (`afterStageWaitInSeconds`): zero is allowed (no
/// wait), anything above [`MAX_SECONDS`] is not.
pub fn check_seconds_or_zero(seconds: u64) -> Result<u64, DurationError> {
    if seconds > MAX_SECONDS {
        Err(DurationError { text: format!("{seconds}s"), problem: DurationProblem::TooLong })
    } else {
        Ok(seconds)
    }
}

fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{d:?}") }
}

/// `now + d`, capped at `now + MAX` and never panicking: a deadline further away than a year
/// is a deadline nobody waits for.
pub fn deadline(now: Instant, d: Duration) -> Instant {
    // A monotonic clock holds centuries past boot; a year more cannot leave its range, so the
    // fallback is unreachable in practice and only keeps this total.
    let d = d.min(MAX);
    now.checked_add(d).unwrap_or(now)
}

/// `now + d` for wall-clock times, with the same cap.
pub fn system_after(now: SystemTime, d: Duration) -> SystemTime {
    let d = d.min(MAX);
    now.checked_add(d).unwrap_or(now)
}

/// `at + seconds` for a jiff timestamp, with the same cap (a stored budget or wait longer than
/// [`MAX`] counts as [`MAX`]); saturates at the end of jiff's range.
pub fn timestamp_after(at: Timestamp, seconds: u64) -> Timestamp {
    let secs = i64::try_from(seconds.min(MAX_SECONDS)).unwrap_or(i64::MAX);
    at.checked_add(SignedDuration::from_secs(secs)).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_grammar() {
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse(" 2h ").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("PT10M").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("8760h").unwrap(), MAX);
    }

    #[test]
    fn each_refusal_names_the_fix() {
        for (bad, says) in [
            ("", "expected a duration"),
            ("soon", "expected a duration"),
            ("3d", "the unit must be s, m or h"),
            ("2w", "the unit must be s, m or h"),
            ("-5m", "expected a duration"),
            ("0", "longer than zero"),
            ("0s", "longer than zero"),
            ("500ms", "at least 1s"),
            ("8761h", "at most one year"),
            ("5124095576030432h", "at most one year"),
            ("300000000000s", "at most one year"),
            ("99999999999999999999999999", "at most one year"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }

    #[test]
    fn additions_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), now + MAX);
        assert_eq!(deadline(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        let t = SystemTime::UNIX_EPOCH;
        assert_eq!(system_after(t, Duration::MAX), t + MAX);
        let ts = Timestamp::UNIX_EPOCH;
        assert_eq!(
            timestamp_after(ts, u64::MAX),
            ts.checked_add(SignedDuration::from_secs(MAX_SECONDS as i64)).unwrap()
        );
        assert_eq!(timestamp_after(Timestamp::MAX, 10), Timestamp::MAX);
        assert_eq!(check_seconds_or_zero(0), Ok(0));
        assert!(check_seconds_or_zero(300_000_000_000).unwrap_err().to_string().contains("one year"));
    }

    proptest! {
        #[test]
        fn an_accepted_duration_is_within_the_range(s in "\\PC{0,24}") {
            if let Ok(d) = parse(&s) {
                prop_assert!(d >= Duration::from_secs(1) && d <= MAX);
            }
        }

        #[test]
        fn whole_seconds_round_trip(n in 1u64..=MAX_SECONDS) {
            prop_assert_eq!(parse(&n.to_string()).unwrap(), Duration::from_secs(n));
            prop_assert_eq!(parse(&format!("{n}s")).unwrap(), Duration::from_secs(n));
        }
    }
}
