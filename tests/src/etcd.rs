//! A real 3-member etcd cluster on 127.0.0.1 (Debian's `etcd-server`), each member with its own
//! ports and data directory, stopped by PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
    /// The certificate and key the members serve clients with (TLS), if any.
    tls: Option<(PathBuf, PathBuf)>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Whether `etcd` is installed (scripts/test.sh installs it; with CI=true its absence fails).
pub fn etcd_available() -> bool {
    let found =
        Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("etcd is missing: scripts/test.sh installs Debian's etcd-server");
    }
    found
}

impl EtcdCluster {
    /// Starts three members and waits until the cluster has a leader.
    pub fn start() -> EtcdCluster {
        Self::start_with(None)
    }

    /// The same, serving clients over TLS with `cert` and `key` (PEM) when given.
    pub fn start_with(tls: Option<(PathBuf, PathBuf)>) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members, tls };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn initial_cluster(&self) -> String {
        let peers: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        peers.join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data = self.data_dir(i);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut command = Command::new("etcd");
        if let Some((cert, key)) = &self.tls {
            command.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        let child = command
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "elasticfs-test"])
            // Fast elections, so that the fault tests do not wait long for a new leader.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.members[i].child = Some(child);
    }

    /// `host:port` of every member's client URL, comma-separated (for `etcd://…`).
    pub fn endpoints(&self) -> String {
        let all: Vec<String> = self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
        all.join(",")
    }

    /// How a client in this process reaches file system `name` on this cluster (giving up
    /// after 20 s without a member).
    pub fn options(&self, name: &str) -> elasticfs_metadata::kv::EtcdOptions {
        elasticfs_metadata::kv::EtcdOptions {
            endpoints: self.endpoints().split(',').map(String::from).collect(),
            name: name.into(),
            tls_ca: None,
            user: None,
            give_up_after: Some(Duration::from_secs(20)),
        }
    }

    /// The `--meta` URL of file system `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("etcd://{}/{name}", self.endpoints())
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// `etcdctl` against `endpoints`, trusting the cluster's certificate when it has one.
    fn etcdctl_at(&self, endpoints: &str) -> Command {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3").args(["--endpoints", endpoints, "--command-timeout", "2s"]);
        if let Some((cert, _)) = &self.tls {
            command.arg("--cacert").arg(cert);
        }
        command
    }

    fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let out = self.etcdctl_at(&self.endpoints()).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the running members agree on a leader.
    pub fn wait_healthy(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.leader().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the etcd cluster did not elect a leader: {}", self.logs());
    }

    /// The index of the member that leads now, if any.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let out = self
                .etcdctl_at(&self.endpoint(i))
                .args(["endpoint", "status", "-w", "json"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            let status = &json[0]["Status"];
            let (leader, me) = (status["leader"].as_u64()?, status["header"]["member_id"].as_u64()?);
            if leader != 0 && leader == me {
                return Some(i);
            }
        }
        None
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "kill it first");
        self.spawn(i);
    }

    /// Every key of the cluster under `prefix`, counted (for tests that check what is left).
    pub fn count_keys(&self, prefix: &str) -> usize {
        self.etcdctl(&["get", "--prefix", "--keys-only", "--count-only", "-w", "json", prefix])
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0) as usize
    }

    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
