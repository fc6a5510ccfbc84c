//! The testbed's Node objects: control-plane and kwok worker nodes registered as kubeadm and a
//! kubelet would, their "kubelets" stopped and started, versions set, readiness awaited.

use super::*;

impl Testbed {
    pub(super) async fn create_control_plane_nodes(&self) -> Result<(), Error> {
        let client = self.client().await?;
        let (members, etcd_version) = {
            let st = self.st();
            (st.members.clone(), st.etcd_version.clone())
        };
        for m in &members {
            let node = node_object(
                &m.node,
                NodeRole::ControlPlane,
                &m.binaries.version,
                m.index,
                &BTreeMap::from([(MEMBER_ANNOTATION.to_string(), m.index.to_string())]),
                &BTreeMap::new(),
                &[json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})],
            );
            create_node(&client, node).await?;
            let etcd = if m.index == 0 { Some(&etcd_version) } else { None };
            let endpoint = format!("127.0.0.1:{}", m.apiserver_port);
            crate::workloads::apply_static_pods(&client, &m.node, &m.binaries.version, etcd, &endpoint)
                .await?;
        }
        Ok(())
    }

    /// Names and specs for `n` new workers continuing the testbed's numbering.
    pub fn next_worker_specs(&self, n: usize, version: &Version) -> Vec<WorkerSpec> {
        let mut st = self.st();
        let first = st.next_worker;
        st.next_worker += n;
        (first..first + n)
            .map(|i| WorkerSpec {
                name: format!("worker-{i:03}"),
                version: version.clone(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                taints: Vec::new(),
            })
            .collect()
    }

    /// Adds workers and waits until each is Ready and untainted.
    pub async fn add_workers(&self, specs: Vec<WorkerSpec>) -> Result<Vec<String>, Error> {
        let client = self.client().await?;
        let mut names = Vec::new();
        let offset = self.st().members.len();
        let creates = specs.iter().enumerate().map(|(i, s)| {
            let index = offset + worker_index(&s.name).unwrap_or(i);
            let node = node_object(
                &s.name,
                NodeRole::Worker,
                &s.version,
                index,
                &s.labels,
                &s.annotations,
                &s.taints,
            );
            create_node(&client, node)
        });
        // Bounded parallelism: the apiserver handles it, and 200 nodes take seconds not minutes.
        let mut stream = futures::stream::iter(creates).buffer_unordered(16);
        use futures::StreamExt;
        while let Some(r) = stream.next().await {
            r?;
        }
        for s in &specs {
            names.push(s.name.clone());
        }
        self.wait_nodes_ready(&names).await?;
        Ok(names)
    }

    /// Deletes a worker's Node (its pods are then garbage-collected, as on a real cluster).
    pub async fn remove_worker(&self, name: &str) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        api.delete(name, &Default::default()).await.map(|_| ()).map_err(|e| node_error(name, "deleting", e))
    }

    /// Sets a worker's kubelet and kube-proxy versions, as an upgraded kubelet would report.
    pub async fn set_node_version(
        &self,
        name: &str,
        kubelet: &Version,
        kube_proxy: &Version,
    ) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let patch = json!({"status": {"nodeInfo": {
            "kubeletVersion": kubelet.git_version(),
            "kubeProxyVersion": kube_proxy.git_version(),
        }}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| node_error(name, "patching", e))
    }

    /// Stops a node's "kubelet": kwok lets go of the node (it leaves kwok's label selector),
    /// so nothing reports its status or renews its lease any more. Within the controller
    /// manager's grace period (60 s here) the node lifecycle controller marks it Ready=Unknown
    /// and taints it `node.kubernetes.io/unreachable`, as it does with a real dead kubelet;
    /// until then a test may write the node's status itself (e.g. Ready=False).
    pub async fn stop_kubelet(&self, name: &str) -> Result<(), Error> {
        self.label_node(name, json!({KUBELET_STOPPED_LABEL: "true"})).await
    }

    /// Starts a stopped "kubelet" again (kwok takes the node back, renews its lease and
    /// reports it Ready) and waits until the node is Ready without a not-ready taint.
    pub async fn start_kubelet(&self, name: &str) -> Result<(), Error> {
        self.label_node(name, json!({KUBELET_STOPPED_LABEL: null})).await?;
        self.wait_nodes_ready(&[name.to_string()]).await
    }

    pub(super) async fn label_node(&self, name: &str, labels: serde_json::Value) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let patch = json!({"metadata": {"labels": labels}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| node_error(name, "labelling", e))
    }

    /// Waits until the named nodes (all nodes when empty) are Ready with no not-ready taint.
    pub async fn wait_nodes_ready(&self, names: &[String]) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client().await?);
        let log = self.log_path("kwok");
        let names = names.to_vec();
        wait_until("nodes", &log, READY_TIMEOUT, || {
            let api = api.clone();
            let names = names.clone();
            async move {
                let nodes = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
                let mut not_ready = Vec::new();
                for n in &nodes.items {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    if !names.is_empty() && !names.contains(&name) {
                        continue;
                    }
                    if !node_is_ready(n) {
                        not_ready.push(name);
                    }
                }
                if !names.is_empty() {
                    let present: Vec<String> =
                        nodes.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
                    not_ready.extend(names.iter().filter(|n| !present.contains(n)).cloned());
                }
                not_ready.sort();
                match not_ready.first() {
                    None => Ok(()),
                    Some(first) => Err(format!("{} not ready yet (first: {first})", not_ready.len())),
                }
            }
        })
        .await
    }

    /// Creates a namespace and waits for its default ServiceAccount (until it exists, the
    /// ServiceAccount admission plugin refuses pods).
    pub async fn create_namespace(&self, name: &str) -> Result<(), Error> {
        let client = self.client().await?;
        let ns: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| Error::Config(e.to_string()))?;
        match ns.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("creating namespace {name}"), e)),
        }
        let sa: Api<ServiceAccount> = Api::namespaced(client, name);
        wait_until(
            &format!("ServiceAccount default in {name}"),
            &self.log_path("kube-controller-manager-0"),
            READY_TIMEOUT,
            || {
                let sa = sa.clone();
                async move {
                    match sa.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("missing".into()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    }
}

/// A failed request about node `name`: NotFound (bad input: exit 2 in the CLI) for a 404.
pub(super) fn node_error(name: &str, doing: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!("no node named {name}")),
        e => Error::kube(format!("{doing} node {name}"), e),
    }
}

pub(super) fn worker_index(name: &str) -> Option<usize> {
    name.strip_prefix("worker-")?.parse().ok()
}

/// A Node as kubeadm + a kubelet would register it, with kwok-friendly status.
pub(super) fn node_object(
    name: &str,
    role: NodeRole,
    version: &Version,
    index: usize,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    taints: &[serde_json::Value],
) -> serde_json::Value {
    let zone = match index % 3 {
        0 => "zone-a",
        1 => "zone-b",
        _ => "zone-c",
    };
    let mut all_labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("topology.kubernetes.io/region".to_string(), "local".to_string()),
        ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
        ("node.kubernetes.io/instance-type".to_string(), "kwok.8x32".to_string()),
        (TESTBED_LABEL.to_string(), "true".to_string()),
    ]);
    if role == NodeRole::ControlPlane {
        all_labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
        all_labels.insert("node.kubernetes.io/exclude-from-external-load-balancers".into(), String::new());
    }
    all_labels.extend(labels.clone());
    let mut all_annotations = BTreeMap::from([
        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
        ("kwok.x-k8s.io/node".to_string(), "fake".to_string()),
    ]);
    all_annotations.extend(annotations.clone());
    // 10.128.0.0/12 split into /24s: room for 4096 nodes of 254 pods.
    let cidr = format!("10.{}.{}.0/24", 128 + index / 256, index % 256);
    let resources = json!({
        "cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi", "hugepages-2Mi": "0",
    });
    let allocatable = json!({
        "cpu": "7800m", "memory": "31Gi", "pods": "110", "ephemeral-storage": "95Gi", "hugepages-2Mi": "0",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": all_annotations},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("kwok://{name}"), "taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": allocatable,
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kernelVersion": "6.1.0-40-amd64",
                "kubeProxyVersion": version.git_version(),
                "kubeletVersion": version.git_version(),
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "",
            },
        },
    })
}

pub(super) async fn create_node(client: &Client, node: serde_json::Value) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
    let obj: Node = serde_json::from_value(node).map_err(|e| Error::Config(e.to_string()))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(Error::Config(format!("node {name} already exists")))
        }
        Err(e) => Err(Error::kube(format!("creating node {name}"), e)),
    }
}

/// Ready=True and no `node.kubernetes.io/not-ready` taint.
pub fn node_is_ready(n: &Node) -> bool {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
    ready && !tainted
}
