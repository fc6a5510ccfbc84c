//! Changing a running testbed's members: upgrading a member's binaries, and the faults chaos
//! tests inject (an apiserver or etcd stopped and started again, kwok restarted).

use super::*;

impl Testbed {
    /// Replaces a control-plane member's binaries with another release and restarts them in
    /// kubeadm's order (apiserver, controller-manager, scheduler), waiting for each; then
    /// reports the new kubelet version on its Node and updates its mirror pods.
    ///
    /// Crash-safe, like a node's package upgrade (issue 18 item 19): the target binaries are
    /// recorded in the state file *before* anything is stopped (the intent), and every step is
    /// idempotent ([`Testbed::converge_member`]: a component already running the recorded
    /// binary is kept, anything else is replaced). A `kill -9` at any point — even between
    /// stopping the old apiserver and starting the new one — leaves a member that running the
    /// same upgrade again completes. Nothing before the Node update needs the API server.
    pub async fn upgrade_member(&self, index: usize, version: &Version) -> Result<(), Error> {
        let binaries = self.cache.kubernetes(version)?;
        let node = {
            let mut st = self.st();
            let m = st
                .members
                .get_mut(index)
                .ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))?;
            m.binaries = binaries;
            m.node.clone()
        };
        self.save()?;
        self.converge_member(index).await?;
        self.set_node_version(&node, version, version).await?;
        let client = self.client().await?;
        let (etcd, endpoint) = {
            let st = self.st();
            let etcd = if index == 0 { Some(st.etcd_version.clone()) } else { None };
            (etcd, format!("127.0.0.1:{}", st.member(index)?.apiserver_port))
        };
        crate::workloads::apply_static_pods(&client, &node, version, etcd.as_ref(), &endpoint).await?;
        Ok(())
    }

    /// Brings a member's apiserver, controller-manager and scheduler (in that order) to the
    /// binaries its state records: a process alive and running that binary is kept, any
    /// other (an older binary, or none: stopped by a killed upgrade) is stopped and started
    /// again; each is then waited for until healthy. Running it twice changes nothing more.
    ///
    /// Test hook: with `REFIT_TESTBED_HOLD_AFTER_STOP=<component>` (e.g. `kube-apiserver`),
    /// after stopping that component it writes `held-<component>-<index>` in the testbed
    /// directory and waits for ten minutes, so a test can `kill -9` an upgrade between
    /// stopping the old binary and starting the new one.
    pub async fn converge_member(&self, index: usize) -> Result<(), Error> {
        for component in [APISERVER, CONTROLLER_MANAGER, SCHEDULER] {
            let (pid, binary) = {
                let st = self.st();
                let m = st
                    .members
                    .get(index)
                    .ok_or_else(|| Error::NotFound(format!("no control-plane member {index}")))?;
                let binary = match component {
                    APISERVER => m.binaries.apiserver.clone(),
                    CONTROLLER_MANAGER => m.binaries.controller_manager.clone(),
                    _ => m.binaries.scheduler.clone(),
                };
                (m.pids.get(component).copied(), binary)
            };
            let name = format!("{component}-{index}");
            if pid.is_some_and(|p| runs_binary(p, &binary)) {
                tracing::debug!(%name, "already runs {}", binary.display());
            } else {
                // Known by pid when this handle attached: stopped whichever process started it.
                self.stop_proc(&name);
                self.st().member_mut(index)?.pids.remove(component);
                self.save()?;
                hold_after_stop(&self.dir(), &name, component);
                match component {
                    APISERVER => self.start_apiserver(index).await?,
                    CONTROLLER_MANAGER => self.start_controller_manager(index)?,
                    _ => self.start_scheduler(index)?,
                }
            }
            match component {
                APISERVER => {
                    let member = self.st().member(index)?.clone();
                    self.wait_apiserver(&member).await?
                }
                _ => self.wait_component_health(index, component).await?,
            }
            self.save()?;
        }
        Ok(())
    }

    /// The member whose Node is `node`, if it is a control-plane node.
    pub fn member_for_node(&self, node: &str) -> Option<Member> {
        self.st().members.iter().find(|m| m.node == node).cloned()
    }

    /// Stops one member's apiserver (fault injection). Clients through the load balancer fail
    /// over to other members, if any.
    pub fn stop_apiserver(&self, index: usize) -> Result<(), Error> {
        if index >= self.st().members.len() {
            return Err(Error::NotFound(format!("no control-plane member {index}")));
        }
        self.stop_proc(&format!("{APISERVER}-{index}"));
        self.st().member_mut(index)?.pids.remove(APISERVER);
        self.save()
    }

    /// Chaos: stops etcd — every apiserver loses its store until [`Testbed::start_etcd_again`]
    /// (same data directory, same ports). The state file is not rewritten: another process
    /// (a `refit sandbox upgrade-node` under way) may be writing it, and etcd's recorded pid
    /// is only replaced when etcd starts again.
    pub fn stop_etcd(&self) {
        self.stop_proc("etcd");
    }

    /// Chaos: starts etcd again after [`Testbed::stop_etcd`] and waits until it is healthy.
    pub async fn start_etcd_again(&self) -> Result<(), Error> {
        self.reload()?;
        self.start_etcd().await
    }

    /// Chaos: stops one member's apiserver like [`Testbed::stop_apiserver`], touching only its
    /// own pid in the state file (re-read first: another process may have changed it).
    pub fn stop_apiserver_only(&self, index: usize) -> Result<(), Error> {
        self.reload()?;
        if index >= self.st().members.len() {
            return Err(Error::NotFound(format!("no control-plane member {index}")));
        }
        self.stop_proc(&format!("{APISERVER}-{index}"));
        self.st().member_mut(index)?.pids.remove(APISERVER);
        self.save()
    }

    /// Chaos: kills kwok (the workers' "kubelets" stop renewing their leases and statuses) and
    /// starts it again, waiting until it serves.
    pub async fn restart_kwok(&self) -> Result<(), Error> {
        self.reload()?;
        self.stop_proc("kwok");
        self.start_kwok().await
    }

    /// Chaos, after [`Testbed::restart_kwok`]: touches every pod bound to a node that is still
    /// Pending `older_than` after its creation (an annotation, so kwok gets a fresh watch event).
    /// Why: a kwok started while pods are being created and bound can handle a pod's event
    /// before it knows the pod's node, and then never starts that pod (seen in the chaos test:
    /// a pod created the second kwok's informers synced stayed Pending for minutes, its PDB
    /// allowed nothing, every drain waited on it). A kubelet never misses its own pods; this
    /// stands in for that. Returns the pods touched (`namespace/name`).
    pub async fn nudge_pods_kwok_missed(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        use k8s_openapi::api::core::v1::Pod;
        let client = self.client().await?;
        let pending = ListParams::default().fields("status.phase=Pending");
        let pods = Api::<Pod>::all(client.clone())
            .list(&pending)
            .await
            .map_err(|e| Error::kube("listing Pending pods", e))?;
        let now = jiff::Timestamp::now();
        let mut touched = Vec::new();
        for pod in pods.items {
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let old = created.is_some_and(|t| {
                Duration::try_from(now.duration_since(t)).is_ok_and(|age| age >= older_than)
            });
            if !bound || !old || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else { continue };
            let patch = json!({"metadata": {"annotations": {"testbed.refit.dev/nudged": now.to_string()}}});
            match Api::<Pod>::namespaced(client.clone(), &ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => touched.push(format!("{ns}/{name}")),
                // Gone or replaced meanwhile: nothing to nudge.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("annotating pod {ns}/{name}"), e)),
            }
        }
        Ok(touched)
    }

    /// Re-reads the state file (a detached sandbox's state changes under other processes) so
    /// that the next save writes back what they wrote.
    pub(super) fn reload(&self) -> Result<(), Error> {
        let dir = self.dir();
        let value = {
            let _lock = state_file::Locked::take(&dir)?;
            state_file::read(&dir)?.ok_or_else(|| {
                Error::io(&dir.join("state.json"), std::io::Error::from(std::io::ErrorKind::NotFound))
            })?
        };
        self.install(state_from(&dir, &value)?, value);
        Ok(())
    }

    /// Starts a member's apiserver again and waits for it.
    pub async fn start_apiserver_again(&self, index: usize) -> Result<(), Error> {
        self.reload()?;
        self.start_apiserver(index).await?;
        self.reload_keeping_apiserver(index)?;
        self.save()
    }

    /// After starting member `index`'s apiserver: the state file as other processes left it,
    /// with this apiserver's new pid.
    pub(super) fn reload_keeping_apiserver(&self, index: usize) -> Result<(), Error> {
        let pid = self.st().members.get(index).and_then(|m| m.pids.get(APISERVER).copied());
        self.reload()?;
        if let (Some(pid), Some(m)) = (pid, self.st().members.get_mut(index)) {
            m.pids.insert(APISERVER.to_string(), pid);
        }
        Ok(())
    }

    /// `gitVersion` of one member's apiserver, asked directly.
    pub async fn apiserver_version(&self, index: usize) -> Result<String, Error> {
        let client = self.member_client(index).await?;
        let v = client.apiserver_version().await.map_err(|e| Error::kube("GET /version", e))?;
        Ok(v.git_version)
    }
}
