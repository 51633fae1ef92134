//! Round trips through the metadata service on loopback: latency (p50, p99) and throughput
//! with 1, 4 and 16 operations in flight, for reads (`getattr`, `lookup`) and a durable
//! mutation (`create`), beside the same calls on the embedded store and, when
//! `ELASTICFS_BENCH_ETCD=host:port,host:port,…` names a running etcd cluster, on etcd (as a
//! file system named `bench-<pid>` there). Prints a markdown table.
//!
//! `cargo bench --bench meta_service` (not criterion: percentiles, and in-flight counts, are
//! the point here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticfs_core::metadata::kv::{EtcdKv, EtcdOptions};
use elasticfs_core::metadata::remote::{ClientOptions, MetaServer, RemoteStore, Retry, ServerConfig};
use elasticfs_core::metadata::{
    ClientInfo, Engine, FileKind, MetaStore, NewNode, SledStore, Superblock, ROOT_INO,
};

const READS_PER_THREAD: usize = 20_000;
const CREATES_PER_THREAD: usize = 1_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sb = Superblock::new("bench", 4 << 20, 64 << 10, "memory://");
    let db = dir.path().join("service");
    drop(SledStore::format(&db, &sb, 0, 0).unwrap());
    let config = ServerConfig { db, token: None, tls: None, lease: Duration::from_secs(30), commit: None };
    let server = MetaServer::open(config).unwrap();
    runtime.spawn(server.serve(listener));
    let options = ClientOptions {
        token: None,
        tls: None,
        client: Some(ClientInfo::this_process("bench")),
        retry: Retry::Hard,
    };
    let remote: Arc<dyn MetaStore> = Arc::new(RemoteStore::connect(&addr, options).unwrap());
    let embedded: Arc<dyn MetaStore> =
        Arc::new(SledStore::format(&dir.path().join("embedded"), &sb, 0, 0).unwrap());

    let mut stores = vec![("service (loopback)", remote), ("embedded", embedded)];
    if let Ok(endpoints) = std::env::var("ELASTICFS_BENCH_ETCD") {
        let options = EtcdOptions {
            endpoints: endpoints.split(',').map(String::from).collect(),
            name: format!("bench-{}", std::process::id()),
            tls_ca: None,
            user: None,
            give_up_after: None,
        };
        let store = Engine::format_kv(EtcdKv::connect(options).unwrap(), &sb, 0, 0).unwrap();
        let session = store.start_session(ClientInfo::this_process("bench"), Some(Duration::from_secs(20)));
        stores.push(("etcd (3 members, loopback)", Arc::new(session.unwrap())));
    }
    println!("| store | operation | in flight | ops/s | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|");
    for (label, store) in &stores {
        let file = store.create(&NewNode::new(ROOT_INO, b"target", FileKind::File, 0o644)).unwrap().ino;
        for threads in [1, 4, 16] {
            let (ops, p50, p99) = measure(store, threads, READS_PER_THREAD, move |s, _, _| {
                s.getattr(file).unwrap();
            });
            println!("| {label} | getattr | {threads} | {ops:.0} | {p50:.0} | {p99:.0} |");
        }
        for threads in [1, 4, 16] {
            let (ops, p50, p99) = measure(store, threads, READS_PER_THREAD, move |s, _, _| {
                s.lookup(ROOT_INO, b"target").unwrap();
            });
            println!("| {label} | lookup | {threads} | {ops:.0} | {p50:.0} | {p99:.0} |");
        }
        for threads in [1, 4, 16] {
            let (ops, p50, p99) = measure(store, threads, CREATES_PER_THREAD, move |s, t, i| {
                let name = format!("f-{threads}-{t}-{i}");
                s.create(&NewNode::new(ROOT_INO, name.as_bytes(), FileKind::File, 0o644)).unwrap();
            });
            println!("| {label} | create (durable) | {threads} | {ops:.0} | {p50:.0} | {p99:.0} |");
        }
    }
}

/// Runs `op` `per_thread` times on each of `threads` threads; returns ops/s, p50 and p99 (µs).
fn measure(
    store: &Arc<dyn MetaStore>,
    threads: usize,
    per_thread: usize,
    op: impl Fn(&dyn MetaStore, usize, usize) + Send + Sync + Copy + 'static,
) -> (f64, f64, f64) {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let began = Instant::now();
                    op(store.as_ref(), t, i);
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    (all.len() as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99))
}
