//! JSON schemas of the fleet types whose serde form is a string or a count written by hand
//! (feature `schema`, used by the hub's custom resources in crates/controller).
//!
//! The hub's API server validates objects against these schemas before refit reads them, so a
//! malformed strategy, window or version is refused by `kubectl apply` itself. The patterns
//! accept what the types' parsers accept (and at most that); the parsers stay the one rule —
//! the schemas only make the API server refuse early what they would refuse anyway.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::fleet::gate::{GateSpec, UtcOffset};
use crate::fleet::strategy::Limit;
use crate::fleet::window::Blackout;
use crate::fleet::window::Day;
use crate::version::Version;

/// A local wall-clock time `HH:MM` (or `HH:MM:SS`), as windows and ScheduledStart gates write it.
pub struct TimeOfDay;

impl JsonSchema for TimeOfDay {
    fn schema_name() -> Cow<'static, str> {
        "TimeOfDay".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
            "description": "Local wall-clock time, HH:MM."
        })
    }
}

impl JsonSchema for Limit {
    fn schema_name() -> Cow<'static, str> {
        "Limit".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Kubernetes' int-or-string; the pattern applies to the string form only.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": "^[0-9]+%?$",
            "description": "A count (3) or a percentage of the scope's members (\"25%\")."
        })
    }
}

impl JsonSchema for UtcOffset {
    fn schema_name() -> Cow<'static, str> {
        "UtcOffset".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])$",
            "description": "A fixed UTC offset: +05:30, -08:00 or Z."
        })
    }
}

impl JsonSchema for Blackout {
    fn schema_name() -> Cow<'static, str> {
        "Blackout".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}(/[0-9]{4}-[0-9]{2}-[0-9]{2})?$",
            "description": "A local date (2026-12-24) or an inclusive range (2026-12-20/2027-01-06)."
        })
    }
}

impl JsonSchema for Version {
    fn schema_name() -> Cow<'static, str> {
        "Version".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^v?[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.-]+)?$",
            "description": "A Kubernetes release, e.g. 1.37.1."
        })
    }
}

impl JsonSchema for GateSpec {
    fn schema_name() -> Cow<'static, str> {
        "GateSpec".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        // Written out: a Kubernetes structural schema cannot say "oneOf these objects by tag"
        // (kube's rewriter refuses a tag property that differs per variant), so the variants'
        // fields are one object and CEL rules say which belong to which type.
        let day = g.subschema_for::<Day>();
        let time = g.subschema_for::<TimeOfDay>();
        let offset = g.subschema_for::<UtcOffset>();
        json_schema!({
            "type": "object",
            "description": "A gate: Approval, or ScheduledStart (startDay, startTime, utcOffset).",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["Approval", "ScheduledStart"]},
                "displayName": {"type": "string", "maxLength": crate::fleet::gate::MAX_DISPLAY_NAME},
                "startDay": day,
                "startTime": time,
                "utcOffset": offset,
            },
            "x-kubernetes-validations": [
                {"rule": "self.type != 'ScheduledStart' || (has(self.startDay) && has(self.startTime) && has(self.utcOffset))",
                 "message": "a ScheduledStart gate needs startDay, startTime and utcOffset"},
                {"rule": "self.type != 'Approval' || (!has(self.startDay) && !has(self.startTime) && !has(self.utcOffset))",
                 "message": "an Approval gate has no startDay, startTime or utcOffset"},
            ],
        })
    }
}

impl JsonSchema for crate::health::HealthGateSpec {
    fn schema_name() -> Cow<'static, str> {
        "HealthGateSpec".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A hub takes prometheus and http gates only: a `command` gate would run a program in
        // the controller for anyone allowed to write an UpdateStrategy (a local fleet runs it
        // as the operator who wrote the file). `workloads` judges one cluster's batch and no
        // stage takes it. Fields the schema does not list (`command`) are pruned.
        let duration = json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "A duration: 30s, 10m, 1h, or plain seconds."
        });
        json_schema!({
            "type": "object",
            "description": "A stage health gate: prometheus (url, query, condition) or http (url); soak and timeout.",
            "required": ["type", "url"],
            "properties": {
                "type": {"type": "string", "enum": ["prometheus", "http"]},
                "name": {"type": "string", "maxLength": 63},
                "url": {"type": "string", "pattern": "^https?://"},
                "query": {"type": "string", "maxLength": crate::health::gate::MAX_QUERY_LEN},
                "condition": {"type": "string"},
                "soak": duration.clone(),
                "timeout": duration,
            },
            "x-kubernetes-validations": [
                {"rule": "self.type != 'prometheus' || has(self.query)",
                 "message": "a prometheus gate needs a query"},
                {"rule": "self.type != 'http' || (!has(self.query) && !has(self.condition))",
                 "message": "an http gate has no query or condition"},
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_accept_what_the_parsers_accept() {
        // Not a regex engine here: the examples the parsers take are checked to have the
        // shapes the patterns describe, so a parser change shows up in this test.
        for ok in ["1.37.1", "v1.36.4"] {
            assert!(ok.parse::<Version>().is_ok(), "{ok}");
        }
        for ok in ["3", "25%"] {
            assert!(ok.parse::<Limit>().is_ok(), "{ok}");
        }
        for ok in ["+05:30", "-08:00", "Z"] {
            assert!(ok.parse::<UtcOffset>().is_ok(), "{ok}");
        }
        for ok in ["2026-12-24", "2026-12-20/2027-01-06"] {
            assert!(ok.parse::<Blackout>().is_ok(), "{ok}");
        }
        let schema = schemars::schema_for!(crate::fleet::Strategy);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.contains("x-kubernetes-int-or-string"), "{text}");
    }
}
