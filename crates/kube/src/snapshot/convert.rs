//! From the wire types (and k8s-openapi objects) to core's plain snapshot values.

use super::*;

pub(super) fn node_info(n: wire::Node) -> NodeInfo {
    let ready = n.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let pressure = n
        .status
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready" && c.status == "True")
        .map(|c| c.type_.clone())
        .collect();
    let address = n.status.addresses.into_iter().find(|a| a.type_ == "InternalIP").map(|a| a.address);
    let allocatable = n.status.allocatable;
    NodeInfo {
        name: n.metadata.name.unwrap_or_default(),
        labels: n.metadata.labels.unwrap_or_default(),
        annotations: n.metadata.annotations.unwrap_or_default(),
        taints: n
            .spec
            .taints
            .into_iter()
            .map(|t| Taint { key: t.key, value: t.value.unwrap_or_default(), effect: t.effect })
            .collect(),
        unschedulable: n.spec.unschedulable.unwrap_or(false),
        ready,
        pressure,
        kubelet: n.status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
        address,
        allocatable: Resources {
            cpu_millis: allocatable.get("cpu").map_or(0, |q| cpu(q, "node allocatable")),
            memory_bytes: allocatable.get("memory").map_or(0, |q| count(q, "node allocatable")),
            pods: allocatable.get("pods").map_or(0, |q| count(q, "node allocatable")),
        },
    }
}

/// CPU millicores of a quantity the apiserver already validated; an unparseable one (it
/// cannot happen short of a broken apiserver) counts as zero, with a warning, rather than
/// failing the whole snapshot.
pub(super) fn cpu(q: &Quantity, what: &str) -> i64 {
    quantity::cpu_millis(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// Bytes (or a plain count, such as pod slots) of a quantity; see [`cpu`] for the fallback.
pub(super) fn count(q: &Quantity, what: &str) -> i64 {
    quantity::bytes(&q.0).unwrap_or_else(|e| {
        tracing::warn!("{what}: {e}; counted as 0");
        0
    })
}

/// The controller ownerReference (there is at most one), as an [`Owner`].
pub(super) fn controller(refs: Option<&Vec<OwnerReference>>) -> Option<Owner> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner { kind: r.kind.clone(), name: r.name.clone() })
}

/// A pod as plain data (shared with the drain, which decides with core's rules).
pub(crate) fn pod_info(p: Pod) -> (PodInfo, Scheduling) {
    pod_from_wire(p.into())
}

/// A decoded pod as plain data.
pub(super) fn pod_from_wire(p: wire::Pod) -> (PodInfo, Scheduling) {
    let wire::Pod { metadata: meta, spec, status } = p;
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        Some("Unknown") => Phase::Unknown,
        // The apiserver sets Pending on create; a pod without a phase has not started.
        Some("Pending") | None => Phase::Pending,
        Some(_) => Phase::Unknown,
    };
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let key = format!(
        "pod {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let scheduling = Scheduling {
        requests: pod_requests(&spec, &key),
        node_selector: spec.node_selector,
        tolerations: spec
            .tolerations
            .into_iter()
            .map(|t| Toleration {
                key: t.key.unwrap_or_default(),
                operator: t.operator.unwrap_or_else(|| "Equal".into()),
                value: t.value.unwrap_or_default(),
                effect: t.effect.unwrap_or_default(),
            })
            .collect(),
        required_node_terms: required_node_terms(spec.affinity),
        spread: spread(spec.topology_spread_constraints),
    };
    let volumes = spec
        .volumes
        .into_iter()
        .map(|v| {
            let name = v.name;
            if v.empty_dir.is_some() {
                Volume::EmptyDir { name }
            } else if let Some(h) = v.host_path {
                Volume::HostPath { name, path: h.path }
            } else if let Some(c) = v.persistent_volume_claim {
                Volume::Claim { name, claim: c.claim_name }
            } else {
                Volume::Other { name }
            }
        })
        .collect();
    let info = PodInfo {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid.unwrap_or_default(),
        node: spec.node_name.filter(|n| !n.is_empty()),
        owner: controller(meta.owner_references.as_ref()),
        phase,
        ready,
        mirror: meta.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        terminating: meta.deletion_timestamp.is_some(),
        labels: meta.labels.unwrap_or_default(),
        volumes,
    };
    (info, scheduling)
}

/// Requests of one container (cpu, memory; pod slots are counted once per pod, not here).
pub(super) fn container_requests(r: Option<&ResourceRequirements>, key: &str) -> Resources {
    let Some(requests) = r.and_then(|r| r.requests.as_ref()) else {
        return Resources::default();
    };
    Resources {
        cpu_millis: requests.get("cpu").map_or(0, |q| cpu(q, key)),
        memory_bytes: requests.get("memory").map_or(0, |q| count(q, key)),
        pods: 0,
    }
}

/// What the scheduler reserves for a pod: the spec's requests read here, combined by core's
/// rule (`PodRequests::effective`).
pub(super) fn pod_requests(spec: &wire::PodSpec, key: &str) -> Resources {
    let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    PodRequests {
        containers: spec.containers.iter().map(|c| container_requests(c.resources.as_ref(), key)).collect(),
        init_containers: spec
            .init_containers
            .iter()
            .map(|c| {
                (container_requests(c.resources.as_ref(), key), c.restart_policy.as_deref() == Some("Always"))
            })
            .collect(),
        pod_cpu_millis: pod_level.and_then(|r| r.get("cpu")).map(|q| cpu(q, key)),
        pod_memory_bytes: pod_level.and_then(|r| r.get("memory")).map(|q| count(q, key)),
        overhead: spec.overhead.as_ref().map_or(Resources::default(), |o| Resources {
            cpu_millis: o.get("cpu").map_or(0, |q| cpu(q, key)),
            memory_bytes: o.get("memory").map_or(0, |q| count(q, key)),
            pods: 0,
        }),
    }
    .effective()
}

pub(super) fn requirement(r: &NodeSelectorRequirement) -> Requirement {
    Requirement {
        key: r.key.clone(),
        operator: r.operator.clone(),
        values: r.values.clone().unwrap_or_default(),
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution` terms as label requirements.
///
/// `matchFields` are not represented: the only field selectable is `metadata.name`, which the
/// DaemonSet controller uses to pin each of its pods to one node, and drains never move
/// DaemonSet pods. A term made only of `matchFields` therefore comes out empty.
pub(super) fn required_node_terms(affinity: Option<wire::Affinity>) -> Vec<Vec<Requirement>> {
    let Some(required) = affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
    else {
        return Vec::new();
    };
    required
        .node_selector_terms
        .iter()
        .map(|t| t.match_expressions.as_deref().unwrap_or_default().iter().map(requirement).collect())
        .collect()
}

/// The hard (`DoNotSchedule`) topology spread constraints; `ScheduleAnyway` ones only weigh
/// the scheduler's choice. A missing labelSelector counts no pod, as the scheduler's does.
pub(super) fn spread(constraints: Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>) -> Vec<Spread> {
    constraints
        .into_iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        .map(|c| Spread {
            max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
            topology_key: c.topology_key,
            selector: selector(c.label_selector),
        })
        .collect()
}

/// A policy/v1 selector; a missing one selects nothing (`Selector::nothing`).
pub(super) fn selector(s: Option<LabelSelector>) -> Selector {
    let Some(s) = s else {
        return Selector::nothing();
    };
    Selector {
        match_labels: s.match_labels.unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .map(|r| Requirement { key: r.key, operator: r.operator, values: r.values.unwrap_or_default() })
            .collect(),
    }
}

/// A budget as plain data (shared with the drain, which names the budget blocking a pod).
pub fn pdb_info(p: PodDisruptionBudget) -> PdbInfo {
    let spec = p.spec.unwrap_or_default();
    // Before the disruption controller has looked at a budget there is no status: zeros, which
    // the checks read as "allows nothing yet" (what the eviction API would answer too).
    let status = p.status.unwrap_or_default();
    PdbInfo {
        namespace: p.metadata.namespace.unwrap_or_default(),
        name: p.metadata.name.unwrap_or_default(),
        always_allow_unhealthy: spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow"),
        selector: selector(spec.selector),
        disruptions_allowed: status.disruptions_allowed.unwrap_or(0),
        current_healthy: status.current_healthy.unwrap_or(0),
        desired_healthy: status.desired_healthy.unwrap_or(0),
        expected_pods: status.expected_pods.unwrap_or(0),
    }
}

/// A workload with its controller owner (a ReplicaSet's Deployment, a Job's CronJob), so that
/// pods can be reported under the name people deployed.
pub(super) fn workload(kind: &str, meta: wire::Meta, replicas: i32) -> WorkloadInfo {
    WorkloadInfo {
        kind: kind.to_string(),
        owner: controller(meta.owner_references.as_ref()),
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        replicas,
    }
}

pub(super) fn pv_info(pv: PersistentVolume) -> PvInfo {
    let spec = pv.spec.unwrap_or_default();
    PvInfo {
        name: pv.metadata.name.unwrap_or_default(),
        claim: spec.claim_ref.as_ref().and_then(|c| {
            Some(format!("{}/{}", c.namespace.as_deref().unwrap_or_default(), c.name.as_deref()?))
        }),
        node_local: spec.local.is_some() || spec.host_path.is_some(),
    }
}
