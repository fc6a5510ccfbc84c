//! Gates: points before or after a stage or group where a run waits — for a person's approval,
//! or for a scheduled start time.
//!
//! As in Azure Fleet: a gate is reached when the run gets to it, is then Pending, and completes
//! when approved (or, for ScheduledStart, at its time). A gate on a group blocks only that
//! group. Gates inside a skipped scope are Skipped. Unlike Azure, an approval may be given
//! *before* the gate is reached (pre-approval) and may carry an expiry: a pre-approval that
//! expired by the time the run reaches the gate does not count, and the gate waits for a fresh
//! one.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Time;
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::window::Day;

/// The longest display name of a gate (Azure's limit).
pub const MAX_DISPLAY_NAME: usize = 100;

/// A gate as written in a strategy.
///
/// ```yaml
/// beforeGates:
///   - type: Approval
///     displayName: QA sign-off
///   - type: ScheduledStart
///     startDay: Monday
///     startTime: "09:00"
///     utcOffset: "+01:00"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields, rename_all_fields = "camelCase")]
pub enum GateSpec {
    /// Waits until someone approves it (`refit fleet gate approve`).
    Approval {
        /// What the approver sees.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
    },
    /// Completes by itself at the next `startDay startTime` (in `utcOffset`) after the run
    /// reaches it, or earlier when approved. Allowed only before a stage or group.
    ScheduledStart {
        /// What the approver sees.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
        /// Weekday.
        start_day: Day,
        /// Time of day, `HH:MM`.
        start_time: Time,
        /// Fixed UTC offset, −14:00…+14:00.
        utc_offset: UtcOffset,
    },
}

impl GateSpec {
    /// The display name, if one was given.
    pub fn display_name(&self) -> Option<&str> {
        match self {
            GateSpec::Approval { display_name } | GateSpec::ScheduledStart { display_name, .. } => {
                display_name.as_deref()
            }
        }
    }

    /// `Approval` or `ScheduledStart`.
    pub fn kind(&self) -> &'static str {
        match self {
            GateSpec::Approval { .. } => "Approval",
            GateSpec::ScheduledStart { .. } => "ScheduledStart",
        }
    }
}

/// A fixed UTC offset as written in a ScheduledStart gate: `+05:30`, `-08:00`, `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset(pub Offset);

impl FromStr for UtcOffset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("'{s}' is not a UTC offset: expected +HH:MM or -HH:MM between -14:00 and +14:00");
        if s == "Z" {
            return Ok(UtcOffset(Offset::UTC));
        }
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1i32, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u8 = h.parse().map_err(|_| bad())?;
        let m: u8 = m.parse().map_err(|_| bad())?;
        // Two digits each: the products below stay far inside i32.
        let minutes = i32::from(h).saturating_mul(60).saturating_add(i32::from(m));
        if m >= 60 || minutes > 14 * 60 {
            return Err(bad());
        }
        Offset::from_seconds(sign.saturating_mul(minutes.saturating_mul(60)))
            .map(UtcOffset)
            .map_err(|_| bad())
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let a = secs.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    }
}

impl Serialize for UtcOffset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The next instant at or after `now` that is `day` at `time` in `offset`: a time already
/// passed this week means next week (Azure's rule for ScheduledStart gates).
pub fn next_scheduled(day: Day, time: Time, offset: UtcOffset, now: Timestamp) -> Timestamp {
    let local = offset.0.to_datetime(now);
    let ahead = i64::from(day.weekday().to_monday_zero_offset())
        .saturating_sub(i64::from(local.weekday().to_monday_zero_offset()))
        .rem_euclid(7);
    let date = local.date().checked_add(jiff::Span::new().days(ahead)).unwrap_or(local.date());
    let mut at = date.to_datetime(time);
    if at < local {
        at = at.checked_add(SignedDuration::from_hours(7 * 24)).unwrap_or(at);
    }
    offset.0.to_timestamp(at).unwrap_or(now)
}

/// Before or after its stage or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum GateTiming {
    /// Before any member of the scope starts.
    Before,
    /// After every member of the scope is done.
    After,
}

/// Which gate: `stage/before/1`, `stage/group/after/2` (1-based within its list). Stable for
/// the life of a run, so `refit fleet gate approve RUN GATE` can name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GateRef {
    /// The stage.
    pub stage: String,
    /// The group, for a group gate.
    pub group: Option<String>,
    /// Before or after.
    pub timing: GateTiming,
    /// Position in its list, from 1.
    pub index: usize,
}

impl fmt::Display for GateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.timing {
            GateTiming::Before => "before",
            GateTiming::After => "after",
        };
        match &self.group {
            Some(g) => write!(f, "{}/{g}/{t}/{}", self.stage, self.index),
            None => write!(f, "{}/{t}/{}", self.stage, self.index),
        }
    }
}

impl FromStr for GateRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("'{s}' is not a gate: expected STAGE/before|after/N or STAGE/GROUP/before|after/N");
        let parts: Vec<&str> = s.split('/').collect();
        let (stage, group, timing, index) = match parts.as_slice() {
            [s, t, i] => (*s, None, *t, *i),
            [s, g, t, i] => (*s, Some(g.to_string()), *t, *i),
            _ => return Err(bad()),
        };
        let timing = match timing {
            "before" => GateTiming::Before,
            "after" => GateTiming::After,
            _ => return Err(bad()),
        };
        let index: usize = index.parse().map_err(|_| bad())?;
        if stage.is_empty() || index == 0 || group.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(GateRef { stage: stage.to_string(), group, timing, index })
    }
}

impl Serialize for GateRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GateRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The four states of a gate (and of an after-stage wait), as Azure Fleet has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum GateStatus {
    /// Not reached yet.
    NotStarted,
    /// Reached and waiting.
    Pending,
    /// Passed.
    Completed,
    /// Its scope was skipped.
    Skipped,
}

impl GateStatus {
    /// Completed or Skipped: the gate no longer holds anything.
    pub fn is_done(self) -> bool {
        matches!(self, GateStatus::Completed | GateStatus::Skipped)
    }
}

/// Who approved a gate, when, and until when the approval counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who approved (as the CLI or API identified them).
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// A pre-approval that is still unused at this instant no longer counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl Approval {
    /// Whether the approval still counts at `now`.
    pub fn valid_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// A gate inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateState {
    /// Which gate.
    pub gate: GateRef,
    /// What it waits for.
    pub spec: GateSpec,
    /// Where it stands.
    pub state: GateStatus,
    /// When the run reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<Timestamp>,
    /// When it completed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// For ScheduledStart: the absolute time it completes by itself (set when reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Timestamp>,
    /// The approval, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The last approval that expired before the gate was reached (shown as the reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<Approval>,
}

impl GateState {
    /// A gate not reached yet.
    pub fn new(gate: GateRef, spec: GateSpec) -> GateState {
        GateState {
            gate,
            spec,
            state: GateStatus::NotStarted,
            reached_at: None,
            completed_at: None,
            starts_at: None,
            approval: None,
            expired: None,
        }
    }

    /// The run reaches the gate at `now`: a valid pre-approval passes it at once; an expired
    /// one is set aside; a ScheduledStart gate learns its absolute time.
    pub fn reach(&mut self, now: Timestamp) {
        self.reached_at = Some(now);
        self.state = GateStatus::Pending;
        if let GateSpec::ScheduledStart { start_day, start_time, utc_offset, .. } = &self.spec {
            self.starts_at = Some(next_scheduled(*start_day, *start_time, *utc_offset, now));
        }
        match self.approval.take() {
            Some(a) if a.valid_at(now) => {
                self.approval = Some(a);
                self.complete(now);
            }
            Some(a) => self.expired = Some(a),
            None => {}
        }
    }

    /// Marks the gate passed at `now`.
    pub fn complete(&mut self, now: Timestamp) {
        self.state = GateStatus::Completed;
        self.completed_at = Some(now);
    }

    /// Marks the gate skipped at `now` (its scope was skipped) unless it already passed.
    pub fn skip(&mut self, now: Timestamp) {
        if !self.state.is_done() {
            self.state = GateStatus::Skipped;
            self.completed_at = Some(now);
        }
    }

    /// Back to not reached (a restart re-applies skipped work), keeping no stale approval.
    pub fn reset_skipped(&mut self) {
        if self.state == GateStatus::Skipped {
            *self = GateState::new(self.gate.clone(), self.spec.clone());
        }
    }

    /// What a person sees: the display name, or the kind and place.
    pub fn title(&self) -> String {
        match self.spec.display_name() {
            Some(n) => n.to_string(),
            None => format!("{} {}", self.spec.kind(), self.gate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn gate_refs_round_trip_and_refuse_garbage() {
        for s in ["stage1/before/1", "stage1/group-1a/after/2"] {
            assert_eq!(s.parse::<GateRef>().unwrap().to_string(), s);
        }
        for s in ["stage1", "stage1/during/1", "stage1/before/0", "a/b/c/d/e", "/before/1", "s//after/1"] {
            assert!(s.parse::<GateRef>().is_err(), "{s}");
        }
    }

    #[test]
    fn utc_offsets_parse_in_range() {
        assert_eq!("+05:30".parse::<UtcOffset>().unwrap().0.seconds(), 5 * 3600 + 1800);
        assert_eq!("-14:00".parse::<UtcOffset>().unwrap().to_string(), "-14:00");
        assert_eq!("Z".parse::<UtcOffset>().unwrap().to_string(), "+00:00");
        for bad in ["+14:01", "05:00", "+5:00", "+05:60", "+05", "UTC"] {
            assert!(bad.parse::<UtcOffset>().is_err(), "{bad}");
        }
    }

    #[test]
    fn scheduled_start_is_the_next_matching_time_and_a_passed_time_means_next_week() {
        let at = |d| {
            next_scheduled(d, "09:00".parse().unwrap(), "+01:00".parse().unwrap(), ts("2026-06-10T09:00:00Z"))
        };
        // 2026-06-10 is a Wednesday; 09:00Z is 10:00 at +01:00, so Wednesday 09:00 has passed.
        assert_eq!(at(Day::Wednesday), ts("2026-06-17T08:00:00Z"));
        assert_eq!(at(Day::Thursday), ts("2026-06-11T08:00:00Z"));
        assert_eq!(at(Day::Tuesday), ts("2026-06-16T08:00:00Z"));
        // Exactly now counts as now.
        let now = ts("2026-06-10T08:00:00Z");
        assert_eq!(
            next_scheduled(Day::Wednesday, "09:00".parse().unwrap(), "+01:00".parse().unwrap(), now),
            now
        );
    }

    #[test]
    fn pre_approval_passes_a_gate_unless_it_expired() {
        let spec = GateSpec::Approval { display_name: None };
        let gref: GateRef = "s/before/1".parse().unwrap();
        let mut g = GateState::new(gref.clone(), spec.clone());
        g.approval = Some(Approval { by: "ana".into(), at: ts("2026-06-01T00:00:00Z"), expires_at: None });
        g.reach(ts("2026-06-02T00:00:00Z"));
        assert_eq!(g.state, GateStatus::Completed);

        let mut g = GateState::new(gref, spec);
        let expiring = Approval {
            by: "ana".into(),
            at: ts("2026-06-01T00:00:00Z"),
            expires_at: Some(ts("2026-06-01T12:00:00Z")),
        };
        g.approval = Some(expiring.clone());
        g.reach(ts("2026-06-02T00:00:00Z"));
        assert_eq!(g.state, GateStatus::Pending);
        assert_eq!(g.approval, None);
        assert_eq!(g.expired, Some(expiring));
    }

    #[test]
    fn gate_specs_parse_with_their_type_tag() {
        let g: Vec<GateSpec> = serde_saphyr::from_str(
            "- type: Approval\n  displayName: QA\n- type: ScheduledStart\n  startDay: Monday\n  startTime: \"09:00\"\n  utcOffset: \"+01:00\"\n",
        )
        .unwrap();
        assert_eq!(g[0], GateSpec::Approval { display_name: Some("QA".into()) });
        assert_eq!(g[1].kind(), "ScheduledStart");
        let err = serde_saphyr::from_str::<Vec<GateSpec>>("- type: Coffee\n").unwrap_err().to_string();
        assert!(err.contains("Coffee"), "{err}");
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<Vec<GateSpec>>(&json).unwrap(), g);
    }
}
