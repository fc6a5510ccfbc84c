//! Bringing a testbed up: etcd, the load balancer, each member's apiserver, controller-manager
//! and scheduler, kwok — each started, then waited on until its health endpoint answers (or its
//! process exits, which ends the wait at once).

use super::*;

impl Testbed {
    pub(super) async fn boot(&self) -> Result<(), Error> {
        self.start_etcd().await?;
        self.start_lb()?;
        let n = self.st().members.len();
        // The first apiserver bootstraps RBAC and system objects alone; the others join it.
        self.start_apiserver(0).await?;
        let rest: Vec<_> = (1..n).map(|i| self.start_apiserver(i)).collect();
        for r in futures::future::join_all(rest).await {
            r?;
        }
        for i in 0..n {
            self.start_controller_manager(i)?;
            self.start_scheduler(i)?;
        }
        for i in 0..n {
            self.wait_component_health(i, CONTROLLER_MANAGER).await?;
            self.wait_component_health(i, SCHEDULER).await?;
        }
        self.start_kwok().await?;
        Ok(())
    }

    pub(super) async fn start_etcd(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let peer = format!("http://127.0.0.1:{}", st.etcd_peer_port);
        let client = format!("https://127.0.0.1:{}", st.etcd_client_port);
        let args = vec![
            "--name=etcd-0".to_string(),
            format!("--data-dir={}", st.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=etcd-0={peer}"),
            format!("--cert-file={}", st.pki.admin_cert.display()),
            format!("--key-file={}", st.pki.admin_key.display()),
            format!("--trusted-ca-file={}", st.pki.ca_cert.display()),
            "--client-cert-auth=true".to_string(),
            "--auto-compaction-retention=1".to_string(),
            "--quota-backend-bytes=8589934592".to_string(),
            // A testbed's data is disposable; fsync would dominate its write latency.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let pid = self.spawn("etcd", &st.etcd_binary, args)?;
        self.st().etcd_pid = pid;
        self.save()?;
        let client = tls_client(&client, &st.pki).await?;
        self.wait_ready("etcd", || {
            let client = client.clone();
            async move {
                let body = get_text(&client, "/health").await?;
                if body.contains("\"health\":\"true\"") { Ok(()) } else { Err(body) }
            }
        })
        .await
    }

    pub(super) fn start_lb(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let listen: SocketAddr = ([127, 0, 0, 1], st.lb_port).into();
        let backends: Vec<SocketAddr> =
            st.members.iter().map(|m| SocketAddr::from(([127, 0, 0, 1], m.apiserver_port))).collect();
        match (&st.lifetime, st.lb_command.as_deref()) {
            (Lifetime::Detached, Some([program, rest @ ..])) => {
                let mut args: Vec<String> = rest.to_vec();
                args.push(format!("--listen={listen}"));
                for b in &backends {
                    args.push(format!("--backend={b}"));
                }
                let pid = self.spawn("load-balancer", Path::new(program), args)?;
                self.st().lb_pid = Some(pid);
                self.save()?;
            }
            (Lifetime::Detached, _) => {
                return Err(Error::Config("a detached testbed needs lb_command".into()));
            }
            (Lifetime::Attached, _) => {
                *self.lb.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(LoadBalancer::start(listen, backends)?);
            }
        }
        Ok(())
    }

    pub(super) fn apiserver_args(st: &State, m: &Member) -> Vec<String> {
        let p = &st.pki;
        let mut args = vec![
            format!("--etcd-servers=https://127.0.0.1:{}", st.etcd_client_port),
            format!("--etcd-cafile={}", p.ca_cert.display()),
            format!("--etcd-certfile={}", p.admin_cert.display()),
            format!("--etcd-keyfile={}", p.admin_key.display()),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={}", m.apiserver_port),
            format!("--tls-cert-file={}", p.admin_cert.display()),
            format!("--tls-private-key-file={}", p.admin_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", p.sa_pub.display()),
            format!("--service-account-signing-key-file={}", p.sa_key.display()),
            "--service-cluster-ip-range=10.96.0.0/16".to_string(),
            "--authorization-mode=Node,RBAC".to_string(),
            "--allow-privileged=true".to_string(),
            // Several apiservers share 127.0.0.1; they must not fight over the endpoints.
            "--endpoint-reconciler-type=none".to_string(),
            // Tests drive hundreds of requests a second; priority-and-fairness would queue them.
            "--max-requests-inflight=1000".to_string(),
            "--max-mutating-requests-inflight=500".to_string(),
            "--profiling=false".to_string(),
        ];
        args.extend(st.apiserver_args.iter().cloned());
        args
    }

    pub(super) async fn start_apiserver(&self, index: usize) -> Result<(), Error> {
        let (program, args, member) = {
            let st = self.st();
            let m =
                st.members.get(index).ok_or_else(|| Error::NotFound(format!("no member {index}")))?.clone();
            (m.binaries.apiserver.clone(), Self::apiserver_args(&st, &m), m)
        };
        let name = format!("{APISERVER}-{index}");
        // An apiserver that cannot reach etcd within its start-up deadline exits ("etcd grpc
        // connection not ready"); under kubeadm the kubelet restarts its static pod, so a
        // restart that overlaps an etcd outage recovers once etcd is back. The testbed does the
        // same: it starts an apiserver that exited again, within READY_TIMEOUT in all.
        let started = Instant::now();
        let mut restarts = 0u32;
        loop {
            let pid = self.spawn(&name, &program, args.clone())?;
            self.st().member_mut(index)?.pids.insert(APISERVER.into(), pid);
            self.save()?;
            match self.wait_apiserver(&member).await {
                Err(e)
                    if !self.running(&name)
                        && started.elapsed() < READY_TIMEOUT
                        && restarts < MAX_RESTARTS =>
                {
                    restarts += 1;
                    tracing::warn!("{name} exited while starting ({e}); starting it again ({restarts})");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn wait_apiserver(&self, member: &Member) -> Result<(), Error> {
        let client = self.member_client(member.index).await?;
        let want = member.binaries.version.git_version();
        let name = format!("{APISERVER}-{}", member.index);
        self.wait_ready(&name, || {
            let client = client.clone();
            let want = want.clone();
            async move {
                let ready = get_text(&client, "/readyz").await?;
                if ready.trim() != "ok" {
                    return Err(ready);
                }
                let v = client.apiserver_version().await.map_err(|e| e.to_string())?;
                if v.git_version == want {
                    Ok(())
                } else {
                    Err(format!("reports {} not {want}", v.git_version))
                }
            }
        })
        .await
    }

    /// Flags the controller-manager and the scheduler share: their member's kubeconfig for
    /// everything, a TLS serving port with the testbed certificate, fast leader election
    /// (only contended when there are several members).
    pub(super) fn controller_args(st: &State, index: usize, port: u16) -> Vec<String> {
        let p = &st.pki;
        let kubeconfig = st.dir.join(format!("member-{index}.kubeconfig"));
        let ha = st.members.len() > 1;
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p.admin_cert.display()),
            format!("--tls-private-key-file={}", p.admin_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            format!("--leader-elect={ha}"),
            "--leader-elect-lease-duration=6s".to_string(),
            "--leader-elect-renew-deadline=4s".to_string(),
            "--leader-elect-retry-period=1s".to_string(),
            "--profiling=false".to_string(),
        ]
    }

    pub(super) fn start_controller_manager(&self, index: usize) -> Result<(), Error> {
        let (program, args) = {
            let st = self.st();
            let m = st.member(index)?;
            let mut args = Self::controller_args(&st, index, m.controller_manager_port);
            args.extend([
                format!("--root-ca-file={}", st.pki.ca_cert.display()),
                format!("--service-account-private-key-file={}", st.pki.sa_key.display()),
                format!("--controllers={CONTROLLERS}"),
                "--use-service-account-credentials=false".to_string(),
                "--node-monitor-period=5s".to_string(),
                "--node-monitor-grace-period=60s".to_string(),
                "--kube-api-qps=200".to_string(),
                "--kube-api-burst=400".to_string(),
                "--concurrent-deployment-syncs=10".to_string(),
                "--concurrent-replicaset-syncs=10".to_string(),
            ]);
            (m.binaries.controller_manager.clone(), args)
        };
        let pid = self.spawn(&format!("{CONTROLLER_MANAGER}-{index}"), &program, args)?;
        self.st().member_mut(index)?.pids.insert(CONTROLLER_MANAGER.into(), pid);
        self.save()
    }

    pub(super) fn start_scheduler(&self, index: usize) -> Result<(), Error> {
        let (program, args) = {
            let st = self.st();
            let m = st.member(index)?;
            (m.binaries.scheduler.clone(), Self::controller_args(&st, index, m.scheduler_port))
        };
        let pid = self.spawn(&format!("{SCHEDULER}-{index}"), &program, args)?;
        self.st().member_mut(index)?.pids.insert(SCHEDULER.into(), pid);
        self.save()
    }

    pub(super) async fn wait_component_health(&self, index: usize, component: &str) -> Result<(), Error> {
        let (url, pki) = {
            let st = self.st();
            let m = st.member(index)?;
            let port =
                if component == CONTROLLER_MANAGER { m.controller_manager_port } else { m.scheduler_port };
            (format!("https://127.0.0.1:{port}"), st.pki.clone())
        };
        let client = tls_client(&url, &pki).await?;
        let name = format!("{component}-{index}");
        self.wait_ready(&name, || {
            let client = client.clone();
            async move {
                let body = get_text(&client, "/healthz").await?;
                if body.trim() == "ok" { Ok(()) } else { Err(body) }
            }
        })
        .await
    }

    pub(super) async fn start_kwok(&self) -> Result<(), Error> {
        let st = self.st().clone();
        let config = st.dir.join("kwok.yaml");
        write_kwok_config(&st.kwok_config, &config)?;
        let args = vec![
            format!("--kubeconfig={}", st.kubeconfig.display()),
            format!("--config={}", config.display()),
            // Every node except those whose "kubelet" a test stopped (see `stop_kubelet`).
            "--manage-all-nodes=false".to_string(),
            format!("--manage-nodes-with-label-selector=!{KUBELET_STOPPED_LABEL}"),
            "--node-lease-duration-seconds=40".to_string(),
            "--cidr=10.128.0.0/12".to_string(),
            "--node-ip=10.0.0.1".to_string(),
        ];
        // kwok's port only serves its health check: when another process took it between the
        // pick and now (kwok exits at once), a fresh one is picked, twice at most.
        let mut port = st.kwok_port;
        let mut attempt = 0;
        loop {
            let mut args = args.clone();
            args.push(format!("--server-address=127.0.0.1:{port}"));
            let pid = self.spawn("kwok", &st.kwok_binary, args)?;
            {
                let mut st = self.st();
                st.kwok_pid = pid;
                st.kwok_port = port;
            }
            self.save()?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let ready = self
                .wait_ready("kwok", || async move {
                    let body = plain_http_get(addr, "/healthz").await?;
                    if body.trim() == "ok" { Ok(()) } else { Err(body) }
                })
                .await;
            match ready {
                Err(e) if attempt < 2 && !self.running("kwok") => {
                    attempt += 1;
                    tracing::warn!("kwok exited on start ({e}); retrying on another port");
                    port = *free_ports(1)?.first().ok_or_else(|| Error::Config("no free port".into()))?;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn wait_cluster_ready(&self) -> Result<(), Error> {
        self.wait_nodes_ready(&[]).await?;
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, "default");
        wait_until(
            "default ServiceAccount",
            &self.log_path("kube-controller-manager-0"),
            READY_TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    match api.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("missing".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    }
}

/// kwok's options followed by the stages the build assembled. kwok v0.8 does not apply its
/// documented option defaults when a configuration file is given, so every parallelism knob is
/// set here (a zero parallelism makes kwok exit at start).
pub(crate) fn write_kwok_config(stages: &Path, out: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(stages).map_err(|e| Error::io(stages, e))?;
    let body: Vec<&str> = text.split("\n---\n").skip(1).collect();
    if body.is_empty() {
        return Err(Error::Config(format!("{} holds no kwok stages", stages.display())));
    }
    let header = "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n  \
        nodeLeaseParallelism: 16\n  podPlayStageParallelism: 16\n  nodePlayStageParallelism: 16\n  \
        podsOnNodeSyncParallelism: 4\n";
    write_file(out, &format!("{header}---\n{}", body.join("\n---\n")), false)
}
