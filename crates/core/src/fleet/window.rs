//! Maintenance windows: when work on a member may *start*.
//!
//! A window recurs weekly (on some weekdays) or monthly (on a day of the month), opens at a
//! local wall-clock time in an IANA time zone and lasts a wall-clock duration. Blackout dates
//! (local dates in the window's zone) cancel every occurrence that would start on them and cut
//! short an occurrence that runs into one, so the window is never open on a blackout date.
//!
//! Wall-clock semantics, chosen because that is what an operator writing "Saturday 22:00 for 4
//! hours, Europe/Berlin" means: the window opens at the first moment the local clock shows
//! `date start` and closes at the first moment it shows `date start + duration`. So:
//! - a start inside a DST gap (02:30 on the night the clocks jump from 02:00 to 03:00) opens
//!   when the clock jumps (03:00), and the window still closes at its wall-clock end;
//! - a start inside a fold (02:30 on the night the clocks go back) opens at the first 02:30;
//! - a 4-hour window from 01:00 is open 3 real hours on a spring-forward night and 5 on a
//!   fall-back night.
//!
//! Work is started only inside a window; an upgrade already under way runs past the close (the
//! single-cluster engine never cuts a node off midway). Members are taken in the order
//! [`WindowPriority`]: open now, opening within 4 hours, no window, closed.
//!
//! Kept hand-written on purpose (issue 12 looked for a library): jiff does the calendar and
//! time-zone arithmetic (gaps, folds, IANA zones); no crate models recurring windows with
//! blackout dates and wall-clock durations across DST (cron crates have no duration and no
//! blackouts, RRULE crates no wall-clock close), so only the recurrence is written here.

use std::fmt;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A day of the week as written in strategy and window files (`Monday` … `Sunday`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Day {
    /// Monday.
    #[serde(alias = "monday")]
    Monday,
    /// Tuesday.
    #[serde(alias = "tuesday")]
    Tuesday,
    /// Wednesday.
    #[serde(alias = "wednesday")]
    Wednesday,
    /// Thursday.
    #[serde(alias = "thursday")]
    Thursday,
    /// Friday.
    #[serde(alias = "friday")]
    Friday,
    /// Saturday.
    #[serde(alias = "saturday")]
    Saturday,
    /// Sunday.
    #[serde(alias = "sunday")]
    Sunday,
}

impl Day {
    /// The jiff weekday.
    pub const fn weekday(self) -> Weekday {
        match self {
            Day::Monday => Weekday::Monday,
            Day::Tuesday => Weekday::Tuesday,
            Day::Wednesday => Weekday::Wednesday,
            Day::Thursday => Weekday::Thursday,
            Day::Friday => Weekday::Friday,
            Day::Saturday => Weekday::Saturday,
            Day::Sunday => Weekday::Sunday,
        }
    }

    /// The day of a jiff weekday.
    pub const fn of(w: Weekday) -> Day {
        match w {
            Weekday::Monday => Day::Monday,
            Weekday::Tuesday => Day::Tuesday,
            Weekday::Wednesday => Day::Wednesday,
            Weekday::Thursday => Day::Thursday,
            Weekday::Friday => Day::Friday,
            Weekday::Saturday => Day::Saturday,
            Weekday::Sunday => Day::Sunday,
        }
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a window recurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Recurrence {
    /// Every week on these days: `weekly: [Saturday, Sunday]`.
    Weekly(Vec<Day>),
    /// Every month on this day, 1–31: `monthly: 15`. Days 29–31 fall on the last day of
    /// shorter months, so "the 31st" means "the end of every month".
    Monthly(u8),
}

/// A range of local dates (inclusive) on which the window never opens: `"2026-12-24"` or
/// `"2026-12-20/2027-01-06"` (ISO 8601 interval notation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blackout {
    /// First blacked-out date.
    pub first: Date,
    /// Last blacked-out date (equal to `first` for a single date).
    pub last: Date,
}

impl Blackout {
    /// Whether `d` is blacked out.
    pub fn contains(&self, d: Date) -> bool {
        self.first <= d && d <= self.last
    }
}

impl fmt::Display for Blackout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}/{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for Blackout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let date = |p: &str| {
            p.trim().parse::<Date>().map_err(|_| format!("'{p}' is not a date: expected YYYY-MM-DD"))
        };
        match s.split_once('/') {
            None => {
                let d = date(s)?;
                Ok(Blackout { first: d, last: d })
            }
            Some((a, b)) => Ok(Blackout { first: date(a)?, last: date(b)? }),
        }
    }
}

impl Serialize for Blackout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Blackout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A member's maintenance window.
///
/// ```yaml
/// recurrence: {weekly: [Saturday, Sunday]}
/// start: "22:00"
/// durationMinutes: 240
/// timeZone: Europe/Berlin
/// blackoutDates: ["2026-12-24", "2026-12-28/2027-01-03"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Which days it opens.
    pub recurrence: Recurrence,
    /// Local wall-clock opening time.
    #[cfg_attr(feature = "schema", schemars(with = "crate::schema::TimeOfDay"))]
    pub start: Time,
    /// Wall-clock length in minutes (1 minute to 7 days).
    pub duration_minutes: u32,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// Local dates on which it never opens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout_dates: Vec<Blackout>,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not an IANA zone this machine's time-zone database knows.
    #[error("unknown time zone '{0}': use an IANA name such as Europe/Berlin or America/New_York")]
    UnknownTimeZone(String),
    /// A weekly window without days.
    #[error("a weekly maintenance window needs at least one day, e.g. weekly: [Saturday]")]
    NoDays,
    /// A monthly day outside 1–31.
    #[error("day of month {0} is out of range: use 1–31 (29–31 fall on the last day of shorter months)")]
    DayOfMonth(u8),
    /// A duration outside 1 minute – 7 days.
    #[error("a maintenance window of {0} minutes is out of range: use 1 to 10080 (7 days)")]
    Duration(u32),
    /// A blackout range that ends before it starts.
    #[error("blackout dates {0} end before they start: write FIRST/LAST")]
    Blackout(Blackout),
    /// Not a window (YAML/JSON of the wrong shape).
    #[error("the maintenance window is not valid: {0} (refit formats window shows a complete one)")]
    Parse(String),
}

/// The longest window: a week.
pub const MAX_DURATION_MINUTES: u32 = 7 * 24 * 60;

/// How far ahead [`Schedule::next_opening`] looks before answering "never" (blackouts can
/// cover long stretches; ten years is beyond any sensible freeze).
const HORIZON_DAYS: i32 = 3660;

/// "Opening soon": a closed window opening within this is taken before members with no window.
pub const SOON: SignedDuration = SignedDuration::from_hours(4);

/// One occurrence of a window, as real instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Opening {
    /// The local date and time the occurrence is nominally for.
    pub nominal_start: DateTime,
    /// When it opens.
    pub start: Timestamp,
    /// When it closes (`nominal_start + duration` in local time, or earlier at the start of a
    /// blackout date it runs into).
    pub end: Timestamp,
}

/// The order in which members of a group are taken (smaller first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WindowPriority {
    /// Its window is open now.
    OpenNow,
    /// Its window opens within [`SOON`].
    OpensSoon,
    /// It has no window (upgraded as soon as the run reaches it).
    NoWindow,
    /// Its window is closed for longer than [`SOON`] (or never opens again).
    Closed,
}

impl MaintenanceWindow {
    /// Parses a window from YAML or JSON and validates it.
    pub fn from_yaml(text: &str) -> Result<MaintenanceWindow, WindowError> {
        const HINTS: &crate::yaml::Hints = &[
            ("", "a mapping with recurrence, start, durationMinutes, timeZone (refit formats window)"),
            ("recurrence", "{weekly: [Saturday, Sunday]} or {monthly: 1-31}"),
            ("recurrence.weekly", "a list of days, e.g. [Saturday, Sunday]"),
            ("recurrence.monthly", "a day of the month, 1-31"),
            ("start", "a local time \"HH:MM\" (quoted), e.g. \"22:00\""),
            ("durationMinutes", "minutes, 1 to 10080"),
            ("timeZone", "an IANA time zone name, e.g. Europe/Berlin"),
            ("blackoutDates", "a list of \"YYYY-MM-DD\" or \"FIRST/LAST\" dates"),
        ];
        let w: MaintenanceWindow = crate::yaml::from_str_hinted(text, HINTS).map_err(WindowError::Parse)?;
        w.validate()?;
        Ok(w)
    }

    /// Checks the window; the same rules [`MaintenanceWindow::schedule`] applies.
    pub fn validate(&self) -> Result<(), WindowError> {
        self.schedule().map(|_| ())
    }

    /// The window resolved against its time zone, ready to answer questions about instants.
    pub fn schedule(&self) -> Result<Schedule<'_>, WindowError> {
        match &self.recurrence {
            Recurrence::Weekly(days) if days.is_empty() => return Err(WindowError::NoDays),
            Recurrence::Monthly(d) if !(1..=31).contains(d) => return Err(WindowError::DayOfMonth(*d)),
            _ => {}
        }
        if !(1..=MAX_DURATION_MINUTES).contains(&self.duration_minutes) {
            return Err(WindowError::Duration(self.duration_minutes));
        }
        if let Some(b) = self.blackout_dates.iter().find(|b| b.last < b.first) {
            return Err(WindowError::Blackout(*b));
        }
        let tz = TimeZone::get(&self.time_zone)
            .map_err(|_| WindowError::UnknownTimeZone(self.time_zone.clone()))?;
        Ok(Schedule { window: self, tz })
    }
}

/// A validated window with its time zone.
#[derive(Debug, Clone)]
pub struct Schedule<'a> {
    window: &'a MaintenanceWindow,
    tz: TimeZone,
}

impl Schedule<'_> {
    /// The time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn duration(&self) -> SignedDuration {
        SignedDuration::from_mins(i64::from(self.window.duration_minutes))
    }

    fn is_blackout(&self, d: Date) -> bool {
        self.window.blackout_dates.iter().any(|b| b.contains(d))
    }

    fn recurs_on(&self, d: Date) -> bool {
        match &self.window.recurrence {
            Recurrence::Weekly(days) => days.contains(&Day::of(d.weekday())),
            Recurrence::Monthly(n) => i16::from(d.day()) == i16::from(*n).min(i16::from(d.days_in_month())),
        }
    }

    /// The first instant at which the local clock shows `dt` or later: the instant itself, the
    /// first of two in a fold, the moment the clocks jump for a time inside a gap.
    fn local(&self, dt: DateTime) -> Option<Timestamp> {
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, after } => {
                Some(before.to_timestamp(dt).ok()?.min(after.to_timestamp(dt).ok()?))
            }
            AmbiguousOffset::Gap { before, after } => {
                let lo = before.to_timestamp(dt).ok()?.min(after.to_timestamp(dt).ok()?);
                self.tz.following(lo).next().map(|t| t.timestamp())
            }
        }
    }

    /// The occurrence nominally on local date `d`, if the window recurs on `d` and `d` is not
    /// blacked out.
    pub fn occurrence_on(&self, d: Date) -> Option<Opening> {
        if !self.recurs_on(d) || self.is_blackout(d) {
            return None;
        }
        let nominal_start = d.to_datetime(self.window.start);
        let nominal_end = nominal_start.checked_add(self.duration()).ok()?;
        let start = self.local(nominal_start)?;
        let mut end = self.local(nominal_end)?;
        // Cut at the first blackout date the occurrence runs into.
        let mut day = d;
        while day < nominal_end.date() {
            day = day.tomorrow().ok()?;
            if self.is_blackout(day) {
                end = end.min(self.local(day.to_datetime(Time::midnight()))?);
                break;
            }
        }
        (end > start).then_some(Opening { nominal_start, start, end })
    }

    /// Local dates whose occurrence could still be open at an instant whose local date is `d`.
    fn candidates_around(&self, d: Date) -> impl Iterator<Item = Date> + '_ {
        // An occurrence lasts at most 7 days; a day more on each side covers offset changes.
        let back = i64::from(self.window.duration_minutes / (24 * 60)).saturating_add(2);
        (back.saturating_neg()..=1).filter_map(move |k| d.checked_add(jiff::Span::new().days(k)).ok())
    }

    /// The occurrence open at `now` that started first, if any.
    pub fn current(&self, now: Timestamp) -> Option<Opening> {
        let today = self.tz.to_datetime(now).date();
        self.candidates_around(today)
            .filter_map(|d| self.occurrence_on(d))
            .find(|o| o.start <= now && now < o.end)
    }

    /// Whether work may start at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.current(now).is_some()
    }

    /// When the window that is open at `now` closes, following occurrences that overlap or
    /// touch it (a Saturday and a Sunday window of 25 hours form one opening). `None` when the
    /// window is closed at `now`.
    pub fn closes_at(&self, now: Timestamp) -> Option<Timestamp> {
        let mut close = self.current(now)?.end;
        // Bounded: each step moves past one occurrence, and occurrences are at least a day apart.
        for _ in 0..400 {
            let today = self.tz.to_datetime(close).date();
            let later = self
                .candidates_around(today)
                .filter_map(|d| self.occurrence_on(d))
                .filter(|o| o.start <= close && close < o.end)
                .map(|o| o.end)
                .max();
            match later {
                Some(end) if end > close => close = end,
                _ => break,
            }
        }
        Some(close)
    }

    /// The first opening at or after `now` (the start of an occurrence, so a window open at
    /// `now` answers with its *next* occurrence). `None` if it never opens within ten years
    /// (blackouts covering everything).
    pub fn next_opening(&self, now: Timestamp) -> Option<Timestamp> {
        let today = self.tz.to_datetime(now).date();
        let mut d = today.yesterday().ok()?;
        for _ in 0..HORIZON_DAYS {
            if let Some(o) = self.occurrence_on(d)
                && o.start >= now
            {
                return Some(o.start);
            }
            d = d.tomorrow().ok()?;
        }
        None
    }

    /// Where a member with this window stands in the order of a group at `now`.
    pub fn priority(&self, now: Timestamp) -> WindowPriority {
        if self.is_open(now) {
            return WindowPriority::OpenNow;
        }
        match self.next_opening(now) {
            Some(t) if t.duration_since(now) <= SOON => WindowPriority::OpensSoon,
            _ => WindowPriority::Closed,
        }
    }
}

/// The priority of a member that may have no window (a window that does not resolve counts as
/// closed: the member must not be upgraded outside a window its owner meant to set).
pub fn priority(window: Option<&MaintenanceWindow>, now: Timestamp) -> WindowPriority {
    match window {
        None => WindowPriority::NoWindow,
        Some(w) => w.schedule().map_or(WindowPriority::Closed, |s| s.priority(now)),
    }
}

/// A window for tests: `start` as HH:MM, no blackouts.
#[cfg(test)]
pub(crate) fn window(recurrence: Recurrence, start: &str, minutes: u32, tz: &str) -> MaintenanceWindow {
    MaintenanceWindow {
        recurrence,
        start: start.parse().unwrap(),
        duration_minutes: minutes,
        time_zone: tz.into(),
        blackout_dates: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weekly_window_opens_and_closes_in_local_time() {
        // Saturday 2026-06-13 22:00 CEST (+02:00) for 4 hours.
        let w = window(Recurrence::Weekly(vec![Day::Saturday]), "22:00", 240, "Europe/Berlin");
        let s = w.schedule().unwrap();
        assert!(!s.is_open(ts("2026-06-13T19:59:59Z")));
        assert!(s.is_open(ts("2026-06-13T20:00:00Z")));
        assert_eq!(s.closes_at(ts("2026-06-13T21:00:00Z")), Some(ts("2026-06-14T00:00:00Z")));
        assert!(!s.is_open(ts("2026-06-14T00:00:00Z")));
        assert_eq!(s.next_opening(ts("2026-06-13T21:00:00Z")), Some(ts("2026-06-20T20:00:00Z")));
        assert_eq!(s.next_opening(ts("2026-06-10T00:00:00Z")), Some(ts("2026-06-13T20:00:00Z")));
        assert_eq!(s.closes_at(ts("2026-06-14T01:00:00Z")), None);
    }

    #[test]
    fn spring_forward_shortens_and_fall_back_lengthens_a_wall_clock_window() {
        // Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST; 2026-10-25 03:00 CEST → 02:00 CET.
        let w = window(Recurrence::Weekly(vec![Day::Sunday]), "01:00", 180, "Europe/Berlin");
        let s = w.schedule().unwrap();
        let spring = s.occurrence_on("2026-03-29".parse().unwrap()).unwrap();
        assert_eq!(spring.start, ts("2026-03-29T00:00:00Z")); // 01:00 CET
        assert_eq!(spring.end, ts("2026-03-29T02:00:00Z")); // 04:00 CEST
        assert_eq!(spring.end.duration_since(spring.start), SignedDuration::from_hours(2));
        let autumn = s.occurrence_on("2026-10-25".parse().unwrap()).unwrap();
        assert_eq!(autumn.start, ts("2026-10-24T23:00:00Z")); // 01:00 CEST
        assert_eq!(autumn.end, ts("2026-10-25T03:00:00Z")); // 04:00 CET
        assert_eq!(autumn.end.duration_since(autumn.start), SignedDuration::from_hours(4));
    }

    #[test]
    fn a_start_inside_a_gap_opens_after_the_gap_and_inside_a_fold_at_the_first_one() {
        // America/New_York: 2026-03-08 02:00 EST → 03:00 EDT; 2026-11-01 02:00 EDT → 01:00 EST.
        let w = window(Recurrence::Weekly(vec![Day::Sunday]), "02:30", 60, "America/New_York");
        let s = w.schedule().unwrap();
        let gap = s.occurrence_on("2026-03-08".parse().unwrap()).unwrap();
        assert_eq!(gap.start, ts("2026-03-08T07:00:00Z")); // 03:00 EDT, when the clocks jump
        assert_eq!(gap.end, ts("2026-03-08T07:30:00Z")); // 03:30 EDT: the wall-clock end
        let w = window(Recurrence::Weekly(vec![Day::Sunday]), "01:30", 60, "America/New_York");
        let s = w.schedule().unwrap();
        let fold = s.occurrence_on("2026-11-01".parse().unwrap()).unwrap();
        assert_eq!(fold.start, ts("2026-11-01T05:30:00Z")); // the first 01:30 (EDT)
        assert_eq!(fold.end, ts("2026-11-01T07:30:00Z")); // 02:30 EST: two real hours
    }

    #[test]
    fn monthly_windows_on_late_days_fall_on_the_last_day_of_short_months() {
        let w = window(Recurrence::Monthly(31), "00:00", 60, "UTC");
        let s = w.schedule().unwrap();
        assert_eq!(s.next_opening(ts("2026-02-01T00:00:00Z")), Some(ts("2026-02-28T00:00:00Z")));
        assert_eq!(s.next_opening(ts("2026-02-28T00:00:01Z")), Some(ts("2026-03-31T00:00:00Z")));
        assert_eq!(s.next_opening(ts("2028-02-01T00:00:00Z")), Some(ts("2028-02-29T00:00:00Z")));
    }

    #[test]
    fn blackouts_cancel_occurrences_and_cut_those_running_into_them() {
        let mut w = window(Recurrence::Weekly(vec![Day::Thursday, Day::Saturday]), "20:00", 360, "UTC");
        w.blackout_dates = vec!["2026-12-24".parse().unwrap(), "2026-12-26/2027-01-02".parse().unwrap()];
        let s = w.schedule().unwrap();
        // Thursday 24th is blacked out; Saturday 26th and 2nd January too; next is Thursday 7th.
        assert_eq!(s.next_opening(ts("2026-12-23T00:00:00Z")), Some(ts("2027-01-07T20:00:00Z")));
        // Saturday 19th runs 20:00–02:00, fine; Thursday 31st is inside the range.
        assert!(s.is_open(ts("2026-12-20T01:00:00Z")));
        // A window starting the day before a blackout closes at its midnight.
        w.blackout_dates = vec!["2026-12-25".parse().unwrap()];
        let s = w.schedule().unwrap();
        assert_eq!(s.closes_at(ts("2026-12-24T21:00:00Z")), Some(ts("2026-12-25T00:00:00Z")));
        assert!(!s.is_open(ts("2026-12-25T00:30:00Z")));
    }

    #[test]
    fn overlapping_occurrences_close_together() {
        // Saturday and Sunday, 25 hours each: one opening from Saturday 10:00 to Monday 11:00.
        let w = window(Recurrence::Weekly(vec![Day::Saturday, Day::Sunday]), "10:00", 25 * 60, "UTC");
        let s = w.schedule().unwrap();
        assert_eq!(s.closes_at(ts("2026-06-13T12:00:00Z")), Some(ts("2026-06-15T11:00:00Z")));
    }

    #[test]
    fn priority_orders_open_soon_none_closed() {
        let w = window(Recurrence::Weekly(vec![Day::Saturday]), "22:00", 60, "UTC");
        assert_eq!(priority(Some(&w), ts("2026-06-13T22:30:00Z")), WindowPriority::OpenNow);
        assert_eq!(priority(Some(&w), ts("2026-06-13T18:00:00Z")), WindowPriority::OpensSoon);
        assert_eq!(priority(Some(&w), ts("2026-06-13T17:59:59Z")), WindowPriority::Closed);
        assert_eq!(priority(None, ts("2026-06-13T17:59:59Z")), WindowPriority::NoWindow);
        let mut bad = w.clone();
        bad.time_zone = "Mars/Olympus".into();
        assert_eq!(priority(Some(&bad), ts("2026-06-13T22:30:00Z")), WindowPriority::Closed);
        assert!(WindowPriority::OpenNow < WindowPriority::OpensSoon);
        assert!(WindowPriority::OpensSoon < WindowPriority::NoWindow);
        assert!(WindowPriority::NoWindow < WindowPriority::Closed);
    }

    #[test]
    fn windows_parse_from_yaml_and_refuse_bad_values() {
        let w = MaintenanceWindow::from_yaml(
            "recurrence: {weekly: [Saturday, sunday]}\nstart: \"22:00\"\ndurationMinutes: 240\ntimeZone: Europe/Berlin\nblackoutDates: [\"2026-12-24\", \"2026-12-28/2027-01-03\"]\n",
        )
        .unwrap();
        assert_eq!(w.recurrence, Recurrence::Weekly(vec![Day::Saturday, Day::Sunday]));
        assert_eq!(w.blackout_dates[1].to_string(), "2026-12-28/2027-01-03");
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<MaintenanceWindow>(&json).unwrap(), w);
        let base = "start: \"22:00\"\ntimeZone: UTC\n";
        for (text, want) in [
            ("recurrence: {weekly: []}\ndurationMinutes: 60\n", "at least one day"),
            ("recurrence: {monthly: 32}\ndurationMinutes: 60\n", "day of month 32"),
            ("recurrence: {monthly: 1}\ndurationMinutes: 0\n", "0 minutes"),
            (
                "recurrence: {monthly: 1}\ndurationMinutes: 60\nblackoutDates: [\"2026-02-02/2026-02-01\"]\n",
                "end before",
            ),
            ("recurrence: {monthly: 1}\ndurationMinutes: 60\ncolour: red\n", "colour"),
            ("recurrence: {daily: 1}\ndurationMinutes: 60\n", "daily"),
        ] {
            let err = MaintenanceWindow::from_yaml(&format!("{base}{text}")).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = MaintenanceWindow::from_yaml(
            "recurrence: {monthly: 1}\nstart: \"22:00\"\ndurationMinutes: 60\ntimeZone: Mars/Olympus\n",
        )
        .unwrap_err();
        assert_eq!(err, WindowError::UnknownTimeZone("Mars/Olympus".into()));
    }

    // ---- properties across DST transitions ----

    const ZONES: &[&str] = &["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"];
    /// Instants around the 2026 transitions of the zones above (and ordinary days).
    const AROUND: &[&str] = &[
        "2026-03-08T07:00:00Z", // New York spring forward
        "2026-03-29T01:00:00Z", // Berlin spring forward
        "2026-04-04T15:00:00Z", // Lord Howe falls back 30 minutes
        "2026-10-03T15:30:00Z", // Lord Howe springs forward 30 minutes
        "2026-10-25T01:00:00Z", // Berlin fall back
        "2026-11-01T06:00:00Z", // New York fall back
        "2026-07-15T12:00:00Z",
    ];

    fn arb_window() -> impl Strategy<Value = MaintenanceWindow> {
        let rec = prop_oneof![
            proptest::sample::subsequence(
                vec![
                    Day::Monday,
                    Day::Tuesday,
                    Day::Wednesday,
                    Day::Thursday,
                    Day::Friday,
                    Day::Saturday,
                    Day::Sunday
                ],
                1..=7
            )
            .prop_map(Recurrence::Weekly),
            (1u8..=31).prop_map(Recurrence::Monthly),
        ];
        // Start times cluster around the 00:00–03:59 hours where transitions happen.
        let start = prop_oneof![(0i8..4, 0i8..60), (0i8..24, 0i8..60)];
        let blackout = (0i64..70, 0i64..4);
        (
            rec,
            start,
            prop_oneof![1u32..300, 1u32..3000],
            proptest::sample::select(ZONES),
            proptest::collection::vec(blackout, 0..4),
            proptest::sample::select(AROUND),
        )
            .prop_map(|(recurrence, (h, m), duration_minutes, tz, blackouts, around)| {
                let base = ts(around).to_zoned(TimeZone::UTC).date();
                let blackout_dates = blackouts
                    .into_iter()
                    .map(|(off, len)| {
                        let first = base.checked_add(jiff::Span::new().days(off - 35)).unwrap();
                        Blackout { first, last: first.checked_add(jiff::Span::new().days(len)).unwrap() }
                    })
                    .collect();
                MaintenanceWindow {
                    recurrence,
                    start: Time::new(h, m, 0, 0).unwrap(),
                    duration_minutes,
                    time_zone: tz.to_string(),
                    blackout_dates,
                }
            })
    }

    fn arb_now() -> impl Strategy<Value = Timestamp> {
        (proptest::sample::select(AROUND), -3 * 24 * 3600i64..3 * 24 * 3600)
            .prop_map(|(t, off)| ts(t) + SignedDuration::from_secs(off))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn window_never_open_on_a_blackout_date(w in arb_window(), now in arb_now()) {
            let s = w.schedule().unwrap();
            let mut t = now;
            for _ in 0..48 {
                if s.is_open(t) {
                    let local = s.time_zone().to_datetime(t).date();
                    prop_assert!(!w.blackout_dates.iter().any(|b| b.contains(local)), "open at {t} ({local})");
                }
                t += SignedDuration::from_mins(37);
            }
        }

        #[test]
        fn next_opening_is_not_before_now_and_nothing_opens_earlier(w in arb_window(), now in arb_now()) {
            let s = w.schedule().unwrap();
            if let Some(next) = s.next_opening(now) {
                prop_assert!(next >= now);
                prop_assert!(s.is_open(next), "not open at its own opening {next}");
                if !s.is_open(now) {
                    // Closed at now and no occurrence starts before `next`: closed all along.
                    let gap = next.duration_since(now);
                    for k in 1..20i32 {
                        let t = now + gap / 20 * k;
                        prop_assert!(!s.is_open(t), "open at {t}, between {now} and {next}");
                    }
                }
            }
        }

        #[test]
        fn an_open_window_closes_at_start_plus_duration_in_wall_clock_time(w in arb_window(), now in arb_now()) {
            let s = w.schedule().unwrap();
            if let Some(o) = s.current(now) {
                let tz = s.time_zone();
                let second = SignedDuration::from_secs(1);
                let wall_end = o.nominal_start + SignedDuration::from_mins(i64::from(w.duration_minutes));
                // Opens at the first moment the clock shows the start…
                prop_assert!(tz.to_datetime(o.start) >= o.nominal_start);
                prop_assert!(tz.to_datetime(o.start - second) < o.nominal_start);
                // …and closes at the first moment it shows start + duration, unless a blackout
                // date cuts it at its midnight.
                let cut = w.blackout_dates.iter().any(|b| b.contains(tz.to_datetime(o.end).date()))
                    && tz.to_datetime(o.end).time() == Time::midnight();
                prop_assert!(cut || tz.to_datetime(o.end) >= wall_end, "end {} before {wall_end}", o.end);
                prop_assert!(tz.to_datetime(o.end - second) < wall_end, "end {} after {wall_end}", o.end);
                prop_assert!(o.start <= now && now < o.end);
                let close = s.closes_at(now).unwrap();
                prop_assert!(close >= o.end);
                prop_assert!(s.is_open(close - SignedDuration::from_secs(1)));
            } else {
                prop_assert!(s.closes_at(now).is_none());
            }
        }
    }
}
