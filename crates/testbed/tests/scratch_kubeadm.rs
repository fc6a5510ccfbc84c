//! SCRATCH (not committed): kubeadm init on one host with the agent.
use refit_testbed::Lifetime;
use refit_testbed::kubeadm::agent::AgentConfig;
use refit_testbed::kubeadm::config;
use refit_testbed::kubeadm::host::Hosts;
use std::path::Path;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn scratch_init() {
    let dir = Path::new("/work/scratch/sb");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut hosts = Hosts::create(&dir.join("hosts"), Lifetime::Attached).unwrap();
    let host = hosts.add_node("cp-1").unwrap().clone();
    let pre = Path::new("/work/prebuild/out-k8s-1.36.4");
    for b in ["kubeadm", "kubelet", "kubectl"] {
        host.write_file(&format!("/usr/bin/{b}"), &std::fs::read(pre.join(b)).unwrap(), 0o755).unwrap();
    }
    host.write_file("/usr/local/bin/systemctl", refit_testbed::kubeadm::systemctl::SCRIPT.as_bytes(), 0o755)
        .unwrap();
    host.run("mkdir", ["-p", "/etc/kubernetes/manifests", "/var/lib/kubelet"]).unwrap();
    let agent = AgentConfig {
        node: "cp-1".into(),
        address: host.address.to_string(),
        cache: refit_testbed::Cache::from_env().unwrap().root().to_path_buf(),
        etcd: "3.6.16".parse().unwrap(),
        log_dir: dir.join("logs/cp-1"),
        healthz_port: 10248,
    };
    let cfgf = dir.join("agent.json");
    std::fs::write(&cfgf, serde_json::to_string(&agent).unwrap()).unwrap();
    let env = [("RUST_LOG".to_string(), "warn,refit_testbed=debug".to_string())];
    let _agent = host
        .spawn(
            "agent",
            env!("CARGO_BIN_EXE_refit-node-agent"),
            &["--config".into(), cfgf.display().to_string()],
            &env,
            &dir.join("agent.log"),
            Lifetime::Attached,
        )
        .unwrap();
    let gw = host.gateway;
    let _lb =
        refit_testbed::lb::LoadBalancer::start((gw, 6443).into(), vec![(host.address, 6443).into()]).unwrap();
    let init = config::init_config(&config::InitSpec {
        node: "cp-1".into(),
        address: host.address.to_string(),
        version: "1.36.4".parse().unwrap(),
        control_plane_endpoint: format!("{gw}:6443"),
        token: "abcdef.0123456789abcdef".into(),
        certificate_key: "ab".repeat(32),
    });
    host.write_file("/var/lib/refit/init.yaml", init.as_bytes(), 0o600).unwrap();
    let t = Instant::now();
    let out = host
        .command("kubeadm", ["init", "--config", "/var/lib/refit/init.yaml", "--upload-certs", "-v=1"])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    std::fs::write(dir.join("init.out"), [&out.stdout[..], b"\n---\n", &out.stderr[..]].concat()).unwrap();
    eprintln!("init: {} in {:?}", out.status, t.elapsed());
    std::thread::sleep(std::time::Duration::from_secs(8));
    let o = host
        .command(
            "kubectl",
            ["--kubeconfig", "/etc/kubernetes/admin.conf", "get", "pods,nodes", "-A", "-o", "wide"],
        )
        .output()
        .unwrap();
    eprintln!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let o = host
        .command(
            "kubectl",
            [
                "--kubeconfig",
                "/etc/kubernetes/admin.conf",
                "get",
                "pod",
                "-n",
                "kube-system",
                "kube-apiserver-cp-1",
                "-o",
                "yaml",
            ],
        )
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&o.stdout).lines().take(30).collect::<Vec<_>>().join("\n"));
    if std::env::var("SCRATCH_HOLD").is_ok() {
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
    assert!(out.status.success());
}
