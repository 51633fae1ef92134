//! Harness for the end-to-end tests: runs the real `elasticfs` binary, mounts for real with
//! FUSE, and serves real S3 over HTTP on 127.0.0.1 from an in-process `s3s-fs` server.

pub mod etcd;
pub mod locks;
pub mod model;
pub mod nfs;
pub mod nfs4;
pub mod posix_suite;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// The `elasticfs` binary built beside this test (`cargo build --workspace --bins` first).
pub fn elasticfs_bin() -> PathBuf {
    built_bin("elasticfs")
}

/// A binary of this workspace, built beside this test.
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` (same profile) first",
        bin.display()
    );
    bin
}

/// A server process of ours (`meta serve`, `nfs serve`), killed if still running when dropped.
#[derive(Default)]
pub struct ServerChild(Option<Child>);

impl ServerChild {
    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Whether the process is still alive (it may have died by itself).
    pub fn alive(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILLs it (a crash).
    pub fn kill(&mut self) {
        let mut child = self.0.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops it with SIGTERM and returns how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends it `signal` and returns how it exited.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a server `command` that prints `listening on ADDR` first; returns it and its port.
/// `log` gives its log for the panic message if it does not start.
pub fn start_listening(mut command: Command, log: impl Fn() -> String) -> (ServerChild, u16) {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("start the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{command:?} did not start: {line:?}; log: {}", log()));
    (ServerChild(Some(child)), addr.rsplit_once(':').unwrap().1.parse().unwrap())
}

/// Whether FUSE can be used here. Under CI a missing FUSE fails the run instead of skipping.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but /dev/fuse or root is missing");
        eprintln!("skipping: FUSE tests need /dev/fuse and root");
    }
    ok
}

/// Runs `command` and returns its output, panicking with the output if it fails.
pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `elasticfs ARGS`, panicking with its output if it fails.
pub fn elasticfs(args: &[&str], env: &[(&str, &str)]) -> String {
    run_ok(Command::new(elasticfs_bin()).args(args).envs(env.iter().copied()))
}

/// Runs `elasticfs ARGS` expecting failure; returns its error output.
pub fn elasticfs_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out =
        Command::new(elasticfs_bin()).args(args).envs(env.iter().copied()).output().expect("run elasticfs");
    assert!(!out.status.success(), "elasticfs {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A formatted file system in a temporary directory.
pub struct Volume {
    pub dir: tempfile::TempDir,
    pub meta: String,
    pub env: Vec<(String, String)>,
}

impl Volume {
    /// A file system whose chunks live in a local directory.
    pub fn local() -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let meta = format!("sled://{}/meta", dir.path().display());
        let chunks = dir.path().join("chunks");
        let vol = Volume { meta, dir, env: Vec::new() };
        vol.format(&["--storage", "file", "--bucket", chunks.to_str().unwrap()]);
        vol
    }

    /// A file system whose chunks live in `server`'s bucket.
    pub fn s3(server: &S3Server) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let meta = format!("sled://{}/meta", dir.path().display());
        let vol = Volume { meta, dir, env: server.env() };
        vol.format(&["--storage", "s3", "--bucket", &server.bucket_url()]);
        vol
    }

    /// A file system on the metadata service `service`, its chunks in `server`'s bucket.
    pub fn shared(service: &MetaService, server: &S3Server) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let mut env = server.env();
        env.push(("ELASTICFS_TOKEN_FILE".into(), service.token_file().display().to_string()));
        let vol = Volume { meta: service.url(), dir, env };
        vol.format(&["--storage", "s3", "--bucket", &server.bucket_url()]);
        vol
    }

    /// A file system named `name` on the etcd cluster `cluster`, its chunks in `server`'s bucket
    /// (under a prefix of its own). Mounts' sessions expire after `lease_secs` without a
    /// heartbeat.
    pub fn etcd(cluster: &etcd::EtcdCluster, name: &str, server: &S3Server, lease_secs: u32) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let mut env = server.env();
        env.push(("ELASTICFS_SESSION_LEASE".into(), lease_secs.to_string()));
        let vol = Volume { meta: cluster.url(name), dir, env };
        vol.format(&["--storage", "s3", "--bucket", &format!("{}/{name}", server.bucket_url())]);
        vol
    }

    fn format(&self, storage: &[&str]) {
        let mut args =
            vec!["format", "--meta", &self.meta, "--block-size", "1M", "--inline-threshold", "16K"];
        args.extend_from_slice(storage);
        elasticfs(&args, &self.env_refs());
    }

    /// Runs `elasticfs config ARGS` on the volume (while nothing holds an embedded store).
    pub fn config(&self, args: &[&str]) -> String {
        let mut all = vec!["config", "--meta", &self.meta];
        all.extend_from_slice(args);
        elasticfs(&all, &self.env_refs())
    }

    /// `elasticfs status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = elasticfs(&["status", "--meta", &self.meta, "--json"], &self.env_refs());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }

    /// Runs `elasticfs fsck` (with `--verify-data` if asked) and returns its report.
    pub fn fsck(&self, verify_data: bool) -> String {
        let mut args = vec!["fsck", "--meta", &self.meta];
        if verify_data {
            args.push("--verify-data");
        }
        elasticfs(&args, &self.env_refs())
    }

    /// Checks that fsck finds the metadata consistent (every counter, link count and chunk
    /// reference count agrees with a recount) and every referenced chunk present (and, with
    /// `verify_data`, intact).
    pub fn assert_fsck_clean(&self, verify_data: bool) {
        let report = self.fsck(verify_data);
        assert!(report.contains(": consistent\n"), "{report}");
        assert!(report.contains("0 missing, 0 corrupt"), "{report}");
    }

    pub fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Mounts the volume at a fresh directory, in a foreground child process, with its disk
    /// cache inside the volume's directory.
    pub fn mount(&self) -> Mount {
        self.mount_with("", None)
    }

    pub fn mount_at(&self, at: &Path) -> Mount {
        Mount::start(self, at.to_path_buf(), &self.options_for(at, ""), None)
    }

    /// Mounts with extra `-o` options (after the defaults, so they win), the mount's log going
    /// to `log` if given.
    pub fn mount_with(&self, options: &str, log: Option<&Path>) -> Mount {
        self.mount_named("mnt", options, log)
    }

    /// Mounts at `<volume>/<name>`, with a disk cache of its own (several mounts of one
    /// volume are several clients).
    pub fn mount_named(&self, name: &str, options: &str, log: Option<&Path>) -> Mount {
        let at = self.dir.path().join(name);
        std::fs::create_dir_all(&at).unwrap();
        let options = self.options_for(&at, options);
        Mount::start(self, at, &options, log)
    }

    /// The test defaults, then `extra` (which wins): a disk cache per mount point, inside the
    /// volume's directory.
    fn options_for(&self, at: &Path, extra: &str) -> String {
        let name = at.file_name().unwrap().to_string_lossy();
        let cache = self.dir.path().join(format!("cache-{name}"));
        format!("threads=4,cache-dir={},{extra}", cache.display())
    }
}

/// A running `elasticfs mount`.
pub struct Mount {
    pub path: PathBuf,
    child: Option<Child>,
}

impl Mount {
    fn start(vol: &Volume, path: PathBuf, options: &str, log: Option<&Path>) -> Mount {
        let mut command = Command::new(elasticfs_bin());
        command
            .args(["mount", "--meta", &vol.meta, path.to_str().unwrap(), "-o", options])
            .envs(vol.env_refs())
            .env("ELASTICFS_NOTIFY_READY", "1")
            .env("ELASTICFS_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(log) = log {
            command.stderr(std::fs::File::create(log).unwrap());
        }
        let mut child = command.spawn().expect("start elasticfs mount");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.trim() != "ready" {
            let status = child.wait().unwrap();
            panic!("elasticfs mount of {} failed: {status}", path.display());
        }
        Mount { path, child: Some(child) }
    }

    /// Unmounts cleanly and waits for the process to commit and exit.
    pub fn unmount(mut self) {
        elasticfs(&["umount", self.path.to_str().unwrap()], &[]);
        let status = self.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "mount process exited with {status}");
    }

    /// SIGKILLs the mount process (a crash). The dead mount stays attached (its users get
    /// ENOTCONN) until [`detach`] is called, so that nothing can write into the directory
    /// underneath by mistake.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

/// Detaches a (dead) mount.
pub fn detach(path: &Path) {
    lazy_unmount(path);
}

fn lazy_unmount(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            lazy_unmount(&self.path);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `elasticfs meta serve` on 127.0.0.1, with a token.
pub struct MetaService {
    pub dir: tempfile::TempDir,
    pub port: u16,
    lease: String,
    extra: Vec<String>,
    child: ServerChild,
}

impl MetaService {
    /// Starts a service on a free port whose sessions expire after `lease` (e.g. "3s").
    pub fn start(lease: &str) -> MetaService {
        Self::start_with(lease, &[])
    }

    /// The same, with more `meta serve` arguments (such as TLS files).
    pub fn start_with(lease: &str, extra: &[&str]) -> MetaService {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "a-test-token\n").unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut service =
            MetaService { dir, port: free_port(), lease: lease.into(), extra, child: ServerChild::default() };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        let db = self.dir.path().join("db");
        let listen = format!("127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("service.log"))
            .unwrap();
        let mut command = Command::new(elasticfs_bin());
        command
            .args([
                "meta",
                "serve",
                "--db",
                db.to_str().unwrap(),
                "--listen",
                &listen,
                "--lease",
                &self.lease,
            ])
            .arg("--token-file")
            .arg(self.token_file())
            .args(&self.extra)
            .env("ELASTICFS_LOG", "info")
            .stderr(log);
        let (child, port) = start_listening(command, || self.log());
        self.port = port;
        self.child = child;
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Whether the service process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }

    /// SIGKILLs the service.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        assert!(!self.child.is_running(), "kill it first");
        self.spawn();
    }
}

/// An S3 server (s3s-fs) on 127.0.0.1 with one bucket, serving from its own thread.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    puts: Arc<PutGate>,
}

/// Holds uploads (PUT requests) back on a test's word, so that a test can stop a client in the
/// middle of one.
#[derive(Default)]
struct PutGate {
    /// `None`: every PUT passes; `Some(n)`: n more pass, the rest wait.
    allowed: std::sync::Mutex<Option<usize>>,
    waiting: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

impl PutGate {
    async fn pass(&self) {
        loop {
            // Registered before the check, so that a release in between is not missed.
            let released = self.released.notified();
            {
                let mut allowed = self.allowed.lock().unwrap();
                match allowed.as_mut() {
                    None => return,
                    Some(0) => {}
                    Some(n) => {
                        *n -= 1;
                        return;
                    }
                }
            }
            self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            released.await;
            self.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

pub const S3_ACCESS_KEY: &str = "elasticfs-test";
pub const S3_SECRET_KEY: &str = "elasticfs-test-secret";
pub const S3_BUCKET: &str = "efs-test";

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(S3_BUCKET)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let data_dir = root.path().to_path_buf();
        let puts = Arc::new(PutGate::default());
        let gate = puts.clone();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&data_dir).unwrap();
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                        _ = &mut rx => break,
                    };
                    let (service, gate) = (service.clone(), gate.clone());
                    let gated = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (service, gate) = (service.clone(), gate.clone());
                        async move {
                            if req.method() == hyper::Method::PUT {
                                gate.pass().await;
                            }
                            hyper::service::Service::call(&service, req).await
                        }
                    });
                    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(socket), gated).into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
        });
        S3Server { port, root, shutdown: Some(tx), puts }
    }

    /// From now on lets `allowed` more uploads through and holds the rest until
    /// [`S3Server::release_puts`].
    pub fn hold_puts_after(&self, allowed: usize) {
        *self.puts.allowed.lock().unwrap() = Some(allowed);
    }

    /// Uploads being held.
    pub fn held_puts(&self) -> usize {
        self.puts.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets every upload through again, those held included.
    pub fn release_puts(&self) {
        *self.puts.allowed.lock().unwrap() = None;
        self.puts.released.notify_waiters();
    }

    pub fn bucket_url(&self) -> String {
        format!("http://127.0.0.1:{}/{S3_BUCKET}", self.port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Objects in the bucket (as the server stores them).
    pub fn bucket_objects(&self) -> usize {
        walk_files(&self.root.path().join(S3_BUCKET)).len()
    }

    /// Bytes of the objects in the bucket.
    pub fn bucket_bytes(&self) -> u64 {
        dir_bytes(&self.root.path().join(S3_BUCKET))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes `mib` MiB to `path` in 1 MiB writes, each MiB distinct (seeded by `seed`: the same
/// seed writes the same file), and fsyncs it.
pub fn write_mib(path: &Path, mib: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..mib as u64 {
        f.write_all(&pattern(seed << 32 | i, 1 << 20)).unwrap();
    }
    f.sync_all().unwrap();
}

/// Drops the kernel's page cache, so that the next reads are asked of the file systems.
pub fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    walk_files(dir).iter().map(|f| f.metadata().map_or(0, |m| m.len())).sum()
}

fn statvfs(path: &Path) -> libc::statvfs {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut st) }, 0, "statvfs {}", path.display());
    st
}

/// Bytes in use on the file system mounted at `path`, as `df` computes them.
pub fn df_used(path: &Path) -> u64 {
    let st = statvfs(path);
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Bytes free for an unprivileged writer on the file system holding `path`: a test that writes a
/// lot checks it first.
pub fn free_disk_bytes(path: &Path) -> u64 {
    let st = statvfs(path);
    st.f_bavail * st.f_frsize
}

pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Deterministic pseudo-random bytes: blake3's extendable output keyed by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A port nothing listens on now (for a server that cannot report the port it picked).
/// A self-signed certificate for 127.0.0.1 and its key (PEM), made with openssl in `dir`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "2", "-subj", "/CN=elasticfs-test", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

/// A port of 127.0.0.1 free now, below the kernel's ephemeral range (32768 and up here): a
/// server that is killed and restarted on its port must not find it taken meanwhile as the
/// local end of some outgoing connection, which an ephemeral port may be. Each call in a
/// process gets another port (tests run in parallel threads).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() * 97;
    for _ in 0..COUNT {
        let port = (FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// The samples of a Prometheus endpoint on 127.0.0.1:`port`, by series (`name{labels}`).
pub fn scrape(port: u16) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF:\n{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

/// Polls `check` every 100 ms until it holds, for at most `secs` seconds; returns whether it did.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// fio, installed by the test command; under CI its absence fails the run.
pub fn fio_available() -> bool {
    tool_available("fio", "--version")
}

/// Whether `tool` runs (asked for its version with `version_arg`); with CI=true a missing tool
/// fails the test instead of skipping it.
pub fn tool_available(tool: &str, version_arg: &str) -> bool {
    let ok = Command::new(tool).arg(version_arg).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {tool} is missing");
        eprintln!("skipping: {tool} is missing");
    }
    ok
}

/// fio's 4 KiB random writes to `file`, checksummed (crc32c) so that a later `--verify_only`
/// run with the same arguments checks every block; `args` add the size, fsyncs and the like.
pub fn fio(file: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("fio")
            .args(["--name=randwrite", "--rw=randwrite", "--bs=4k", "--verify=crc32c", "--randseed=7"])
            // No verify state file in the working directory: the same seed finds the same blocks.
            .arg("--verify_state_save=0")
            .arg(format!("--filename={}", file.display()))
            .args(args),
    )
}

/// The count of objects nothing references, from fsck's report.
pub fn leaked_objects(report: &str) -> u64 {
    let line = report.lines().find(|l| l.starts_with("bucket: ")).expect("fsck reports the bucket");
    let after = line.split("; ").nth(1).expect("bucket: N objects, SIZE; M objects (…)");
    after.split(' ').next().unwrap().parse().unwrap()
}
