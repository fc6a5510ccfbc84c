//! Unit tests of the drain's pieces that need no cluster.

use super::*;
use kube::core::response::{StatusCause, StatusDetails};
use refit_core::pdb::Selector;

fn status(code: u16, message: &str, causes: &[(&str, &str)], kind: &str, name: &str) -> kube::Error {
    kube::Error::Api(Box::new(kube::core::Status {
        status: None,
        code,
        message: message.into(),
        metadata: None,
        reason: String::new(),
        details: Some(StatusDetails {
            name: name.into(),
            group: String::new(),
            kind: kind.into(),
            uid: String::new(),
            causes: causes
                .iter()
                .map(|(r, m)| StatusCause {
                    reason: r.to_string(),
                    message: m.to_string(),
                    field: String::new(),
                })
                .collect(),
            retry_after_seconds: 0,
        }),
    }))
}

#[test]
fn eviction_answers_are_read_as_the_apiserver_means_them() {
    let refused = status(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        &[("DisruptionBudget", "The disruption budget web needs 3 healthy pods and has 3 currently")],
        "",
        "",
    );
    let Answer::Budget { reason, named } = classify("shop", Err(refused)) else { panic!() };
    assert_eq!(named.as_deref(), Some("shop/web"));
    assert!(reason.contains("violate") && reason.contains("needs 3 healthy pods"), "{reason}");
    let processing = status(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        &[("DisruptionBudget", "The disruption budget db is still being processed by the server.")],
        "",
        "",
    );
    assert!(matches!(classify("x", Err(processing)), Answer::Budget { named: Some(n), .. } if n == "x/db"));
    // API priority and fairness also answers 429, without a budget cause: just retry.
    assert!(matches!(
        classify("x", Err(status(429, "Too many requests", &[], "", ""))),
        Answer::Retry { .. }
    ));
    let several = status(
        500,
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        &[],
        "",
        "",
    );
    assert!(matches!(classify("x", Err(several)), Answer::Budget { named: None, .. }));
    assert_eq!(classify("x", Err(status(404, "not found", &[], "pods", "p"))), Answer::Gone);
    let replaced =
        status(409, "Precondition failed: UID in precondition: a, UID in object meta: b", &[], "pods", "p");
    assert_eq!(classify("x", Err(replaced)), Answer::Gone);
    assert!(matches!(classify("x", Err(status(409, "conflict", &[], "", ""))), Answer::Retry { .. }));
    let negative = status(403, "pdb disruptions allowed is negative", &[], "poddisruptionbudget", "web");
    assert!(matches!(classify("x", Err(negative)), Answer::Budget { named: Some(n), .. } if n == "x/web"));
    let terminating = status(403, "namespace x is being terminated", &[("NamespaceTerminating", "")], "", "");
    assert!(matches!(classify("x", Err(terminating)), Answer::Retry { .. }));
    assert!(matches!(classify("x", Err(status(403, "forbidden", &[], "pods", "p"))), Answer::Fatal { .. }));
    assert!(matches!(classify("x", Err(status(503, "unavailable", &[], "", ""))), Answer::Retry { .. }));
    assert_eq!(classify("x", Ok(())), Answer::Accepted);
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let ms = Duration::from_millis;
    let delays = |uid: &str| {
        let mut b = Backoff::new(ms(100), Duration::from_secs(1), uid);
        (0..8).map(|_| b.next()).collect::<Vec<Duration>>()
    };
    let d = delays("uid-1");
    assert!(d[0] >= ms(100) && d[0] < ms(200), "{d:?}");
    assert!(d[1] >= ms(200) && d[1] < ms(400), "{d:?}");
    assert!(d[2] >= ms(400) && d[2] < ms(800), "{d:?}");
    assert!(d.iter().all(|x| *x <= Duration::from_secs(1)), "{d:?}");
    assert!(d[7] >= ms(500), "{d:?}");
    // Jittered per pod, the same for the same pod.
    assert_eq!(delays("uid-1"), d);
    assert_ne!(delays("uid-2"), d);
    assert!(d[4..].windows(2).any(|w| w[0] != w[1]), "spread at the cap too: {d:?}");
    // Zero is never a delay.
    assert!(Backoff::new(Duration::ZERO, Duration::ZERO, "u").next() >= MIN_BACKOFF);
}

fn pod(ns: &str, name: &str, uid: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name, "uid": uid}})).unwrap()
}

#[test]
fn tracker_follows_uids_not_names() {
    let a = PodRef { namespace: "n".into(), name: "db-0".into(), uid: "u1".into() };
    let b = PodRef { namespace: "n".into(), name: "web".into(), uid: "u2".into() };
    let c = PodRef { namespace: "n".into(), name: "api".into(), uid: "u3".into() };
    let t = Tracker::new([&a, &b, &c].into_iter());
    let rx = t.subscribe();
    // Modifications of the tracked pod itself change nothing.
    t.applied(pod("n", "db-0", "u1"));
    assert!(!t.is_gone("u1"));
    assert!(!rx.has_changed().unwrap());
    // Its successor under the same name means it is gone.
    t.applied(pod("n", "db-0", "u9"));
    assert!(t.is_gone("u1"));
    assert!(rx.has_changed().unwrap());
    t.deleted(pod("n", "web", "u2"));
    assert!(t.is_gone("u2"));
    // Untracked pods are ignored; a re-list shows absences.
    t.deleted(pod("n", "other", "u7"));
    assert!(!t.is_gone("u7"));
    t.relisted(vec![pod("n", "db-0", "u9")]);
    assert!(t.is_gone("u3"));
}

fn budget(name: &str, app: &str, allowed: i32) -> PdbInfo {
    PdbInfo {
        namespace: "n".into(),
        name: name.into(),
        selector: Selector {
            match_labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            match_expressions: vec![],
        },
        disruptions_allowed: allowed,
        current_healthy: 3,
        desired_healthy: 3 - allowed,
        expected_pods: 3,
        always_allow_unhealthy: false,
    }
}

#[test]
fn the_gate_lets_through_as_many_pods_as_the_budget_allows_per_change() {
    let cache = PdbCache { state: Mutex::new(PdbState::default()), tx: watch::Sender::new(0) };
    let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let lonely = BTreeMap::from([("app".to_string(), "lonely".to_string())]);
    assert!(lock(&cache.state).put(budget("web", "web", 0)));
    assert!(!lock(&cache.state).put(budget("web", "web", 0)), "an identical status is no change");
    assert!(matches!(cache.gate("n", &web), Gate::Closed { pdb, .. } if pdb == "n/web"));
    assert_eq!(cache.gate("n", &lonely), Gate::Open, "no budget: ask");
    assert_eq!(cache.gate("other", &web), Gate::Open, "budgets are per namespace");
    let before = cache.fingerprint("n", &web);
    lock(&cache.state).put(budget("web", "web", 2));
    assert_ne!(cache.fingerprint("n", &web), before);
    assert_eq!(cache.gate("n", &web), Gate::Open);
    assert_eq!(cache.gate("n", &web), Gate::Open);
    assert!(matches!(cache.gate("n", &web), Gate::Closed { .. }), "two allowed, two granted");
    // A second budget over the same pods: the apiserver refuses those pods (500); the
    // gate does not hold them back, so a fix of the budgets is tried at once.
    lock(&cache.state).put(budget("web-too", "web", 0));
    assert_eq!(cache.gate("n", &web), Gate::Open);
    assert_eq!(cache.names("n", &web).as_deref(), Some("n/web, n/web-too"));
    // An empty selector covers every pod of its namespace, for evictions too (core's
    // rule, checked against the apiserver in tests/pdb_selector.rs).
    let mut all = budget("all", "x", 0);
    all.selector.match_labels.clear();
    lock(&cache.state).put(all);
    assert_eq!(cache.names("n", &lonely).as_deref(), Some("n/all"));
    assert!(matches!(cache.gate("n", &lonely), Gate::Closed { pdb, .. } if pdb == "n/all"));
    assert_eq!(cache.names("other", &lonely), None);
}
