//! The API's OpenAPI 3.1 description, served at `/api/openapi.json`.
//!
//! Written by hand rather than generated (utoipa): the responses are core's types (the run
//! tree, gates, events), and deriving schemas would put a documentation macro into the pure
//! crate. A test keeps this document and the router in step: every API route is described and
//! every described path is served.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Every path the router serves under `/api`, plus `/metrics` and `/healthz` (kept next to
/// the document so the test can compare the two).
pub const ROUTES: &[&str] = &[
    "/api/openapi.json",
    "/api/session",
    "/api/events",
    "/api/fleet/members",
    "/api/fleet/strategies",
    "/api/fleet/gates",
    "/api/fleet/runs",
    "/api/fleet/runs/{name}",
    "/api/fleet/runs/{name}/events",
    "/api/fleet/runs/{name}/audit",
    "/api/fleet/runs/{name}/approve",
    "/api/fleet/runs/{name}/skip",
    "/api/fleet/runs/{name}/stop",
    "/api/fleet/runs/{name}/start",
    "/api/runs",
    "/api/runs/{id}",
    "/metrics",
    "/healthz",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut described: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        described.sort_unstable();
        let mut served = ROUTES.to_vec();
        served.sort_unstable();
        assert_eq!(described, served);
        let api = include_str!("api.rs");
        for r in ROUTES {
            assert!(api.contains(&format!(".route(\"{r}\"")), "{r} is not in the router");
        }
    }
}
