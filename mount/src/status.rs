//! `elasticfs status`. An embedded store is locked by the process that
//! mounts it, so a mount also publishes its figures in `status.json` beside the store; a
//! metadata service answers them live.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use elasticfs_core::gc::survey;
use elasticfs_core::metadata::throughput::ThroughputStatus;
use elasticfs_core::metadata::{MetaStore, SessionRecord, Superblock, Usage, FORMAT_VERSION};
use elasticfs_core::metrics::ClientTotals;
use elasticfs_core::{open_object_store, FileSystem};
use serde_json::json;

use crate::options::human_bytes;
use crate::throughput_spec::describe;
use crate::volume::{self, MetaAccess, MetaUrl, Role};

/// Where an embedded store's mount publishes its status (a service has none: ask it).
fn status_file(meta_url: &str) -> Result<Option<PathBuf>> {
    Ok(match MetaUrl::parse(meta_url)? {
        MetaUrl::Sled(path) => Some(path.join("status.json")),
        MetaUrl::Service { .. } | MetaUrl::Etcd(_) => None,
    })
}

/// Whether a running mount holds the embedded store at `meta_url` (it publishes its status).
fn held_by_mount(meta_url: &str) -> bool {
    status_file(meta_url).ok().flatten().is_some_and(|f| f.exists())
}

/// Whether a mount holds the embedded store at `meta_url` and is still mounted (one whose mount
/// point is gone is exiting: it is committing, and lets go of the store in a moment).
pub(crate) fn held_by_live_mount(meta_url: &str) -> bool {
    let Some(file) = status_file(meta_url).ok().flatten() else { return false };
    let Ok(text) = std::fs::read_to_string(file) else { return false };
    let published: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    published["mount"]["mountpoint"]
        .as_str()
        .is_some_and(|at| crate::mounting::mounted_at(Path::new(at)).ok().flatten().is_some())
}

/// Opens the store for a tool that needs it to itself (`gc`, `fsck`); when a running mount
/// holds an embedded store, the error says so with `fix`.
pub(crate) fn open_unmounted(access: &MetaAccess, fix: &'static str) -> Result<Arc<dyn MetaStore>> {
    volume::open_meta(access, Role::Tool)
        .map_err(|e| if held_by_mount(&access.url) { e.context(fix) } else { e })
}

fn report(
    sb: &Superblock,
    usage: Usage,
    throughput: &ThroughputStatus,
    sessions: &[SessionRecord],
    mount: Option<serde_json::Value>,
) -> serde_json::Value {
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "host": s.client.host,
                "mountpoint": s.client.mountpoint,
                "version": s.client.version,
                "pid": s.client.pid,
                "started_secs": s.started.secs,
            })
        })
        .collect();
    json!({
        "name": sb.name,
        "uuid": sb.uuid,
        "format_version": sb.format_version,
        "block_size": sb.block_size,
        "inline_threshold": sb.inline_threshold,
        "storage": sb.storage,
        "used_bytes": usage.bytes,
        "used_inodes": usage.inodes,
        "throughput": throughput_json(throughput),
        "client_connections": sessions.len(),
        "sessions": sessions,
        "mount": mount,
    })
}

/// EFS's figures, under CloudWatch's names in snake case.
fn throughput_json(t: &ThroughputStatus) -> serde_json::Value {
    json!({
        "mode": describe(&t.settings.mode),
        "settings": t.settings,
        "storage_bytes": t.stored_bytes,
        "burst_credit_balance": t.burst_credit_balance,
        "permitted_throughput": t.permitted_throughput,
        "metered_io_bytes": t.io.metered,
        "total_io_bytes": t.io.total(),
        "data_read_io_bytes": t.io.data_read,
        "data_write_io_bytes": t.io.data_write,
        "metadata_io_bytes": t.io.metadata,
    })
}

/// What this mount did, as its `/metrics` counts it.
fn client_json(c: &ClientTotals) -> serde_json::Value {
    json!({
        "operations": c.operations,
        "operation_errors": c.operation_errors,
        "read_bytes": c.read_bytes,
        "written_bytes": c.written_bytes,
        "memory_cache_hits": c.memory_cache.0,
        "memory_cache_misses": c.memory_cache.1,
        "disk_cache_hits": c.disk_cache.0,
        "disk_cache_misses": c.disk_cache.1,
        "object_store_requests": c.object_requests,
        "object_store_errors": c.object_errors,
        "throttled_seconds": c.throttled_seconds,
        "slice_bytes": c.slice_bytes,
        "compaction_bytes": c.compaction_bytes,
        "compactions": c.compactions,
    })
}

/// The mount's commit mode: `every_secs` when commits are deferred (`-o commit=`).
fn commit_json(deferred: Option<Duration>) -> serde_json::Value {
    match deferred {
        Some(every) => json!({ "mode": "deferred", "every_secs": every.as_secs_f64() }),
        None => json!({ "mode": "durable" }),
    }
}

/// Keeps `status.json` current while a mount runs.
pub struct StatusWriter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl StatusWriter {
    /// Starts publishing, for an embedded store (a service is asked instead).
    pub fn start(fs: Arc<FileSystem>, meta_url: &str, mountpoint: &Path) -> Result<Option<Self>> {
        let Some(path) = status_file(meta_url)? else {
            return Ok(None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, file) = (stop.clone(), path.clone());
        let mountpoint = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let meta = fs.meta();
                if let (Ok(usage), Ok(throughput), Ok(sessions)) =
                    (meta.usage(), meta.throughput(), meta.sessions())
                {
                    let mount = json!({
                        "mountpoint": mountpoint,
                        "pid": std::process::id(),
                        "cache_bytes": fs.chunks().cache().size(),
                        "disk_cache": fs.chunks().disk_cache().map(|d| json!({
                            "dir": d.dir(),
                            "bytes": d.size(),
                        })),
                        "client": client_json(&fs.metrics().totals()),
                        "commit": commit_json(meta.deferred_commits()),
                        "updated_secs": elasticfs_core::metadata::Timestamp::now().secs,
                    });
                    let doc = report(meta.superblock(), usage, &throughput, &sessions, Some(mount));
                    let tmp = file.with_extension("json.tmp");
                    if std::fs::write(&tmp, doc.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, &file);
                    }
                }
                for _ in 0..20 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Ok(Some(StatusWriter { stop, thread: Some(thread), path }))
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn status(access: &MetaAccess, as_json: bool) -> Result<()> {
    let mut doc = match volume::open_meta(access, Role::Tool) {
        Ok(meta) => {
            let mut doc =
                report(meta.superblock(), meta.usage()?, &meta.throughput()?, &meta.sessions()?, None);
            // A metadata service says whether it defers its commits.
            doc["commit"] = commit_json(meta.deferred_commits());
            doc
        }
        Err(e) => {
            // Locked by a running mount: show what it publishes.
            let Some(file) = status_file(&access.url)? else {
                return Err(e);
            };
            let text = std::fs::read_to_string(&file).map_err(|_| e)?;
            serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?
        }
    };
    doc["bucket"] = bucket_json(doc["storage"].as_str().unwrap_or_default());
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let field = |k: &str| doc[k].to_string().trim_matches('"').to_string();
    println!("file system     {} ({})", field("name"), field("uuid"));
    println!("format version  {} (this build reads up to {FORMAT_VERSION})", field("format_version"));
    println!("storage         {}", field("storage"));
    println!("block size      {} bytes (inline up to {})", field("block_size"), field("inline_threshold"));
    println!("used            {} bytes in {} inodes", field("used_bytes"), field("used_inodes"));
    match doc["bucket"]["bytes"].as_u64() {
        Some(stored) => {
            let used = doc["used_bytes"].as_u64().unwrap_or(0).max(1);
            println!(
                "bucket          {} bytes in {} objects ({:.2}x the used bytes; fsck tells what is leaked)",
                stored,
                doc["bucket"]["objects"],
                stored as f64 / used as f64
            );
        }
        None => println!("bucket          not listed: {}", doc["bucket"]["error"].as_str().unwrap_or("?")),
    }
    // The mount's mode (an embedded store), else the store's own (a metadata service).
    let commit = if doc["mount"]["commit"].is_object() { &doc["mount"]["commit"] } else { &doc["commit"] };
    match commit["every_secs"].as_f64() {
        Some(every) => println!(
            "commits         deferred by up to {every} s: a crash of the host loses at most the last {every} s of acknowledged changes, nothing fsynced"
        ),
        None => println!("commits         durable when acknowledged"),
    }
    match doc["mount"].as_object() {
        Some(m) => {
            println!("mounted         at {} by pid {}", m["mountpoint"], m["pid"]);
            println!("memory cache    {} bytes", m["cache_bytes"]);
            match m["disk_cache"].as_object() {
                Some(d) => println!("disk cache      {} bytes in {}", d["bytes"], d["dir"]),
                None => println!("disk cache      off"),
            }
            let c = &m["client"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            println!(
                "this mount      read {}, wrote {} in {} operations ({} errors); throttled {:.1} s",
                human_bytes(n("read_bytes")),
                human_bytes(n("written_bytes")),
                n("operations"),
                n("operation_errors"),
                c["throttled_seconds"].as_f64().unwrap_or(0.0)
            );
            println!(
                "                cache hits/misses: memory {}/{}, disk {}/{}; object store {} requests, {} errors",
                n("memory_cache_hits"),
                n("memory_cache_misses"),
                n("disk_cache_hits"),
                n("disk_cache_misses"),
                n("object_store_requests"),
                n("object_store_errors")
            );
            println!(
                "                writes in place: {} uploaded as slices; {} compactions uploaded {}",
                human_bytes(n("slice_bytes")),
                n("compactions"),
                human_bytes(n("compaction_bytes"))
            );
        }
        None if status_file(&access.url)?.is_none() => {}
        None => println!("mounted         no"),
    }
    let t = &doc["throughput"];
    let bytes = |k: &str| human_bytes(t[k].as_u64().unwrap_or(0));
    println!(
        "throughput      {}: permitted {}/s, burst credits {}",
        t["mode"].as_str().unwrap_or("?"),
        bytes("permitted_throughput"),
        bytes("burst_credit_balance")
    );
    println!(
        "I/O (metered)   {} total, {} read, {} written, {} metadata; {} metered",
        bytes("total_io_bytes"),
        bytes("data_read_io_bytes"),
        bytes("data_write_io_bytes"),
        bytes("metadata_io_bytes"),
        bytes("metered_io_bytes")
    );
    let sessions = doc["sessions"].as_array().cloned().unwrap_or_default();
    println!("client sessions {}", sessions.len());
    for s in sessions {
        println!(
            "  #{:<6} {}:{} (pid {}, elasticfs {})",
            s["id"],
            s["host"].as_str().unwrap_or("?"),
            s["mountpoint"].as_str().unwrap_or("?"),
            s["pid"],
            s["version"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// What the bucket holds (a listing of it: objects and bytes), or why it could not be listed.
fn bucket_json(storage: &str) -> serde_json::Value {
    let listed = open_object_store(storage).map_err(anyhow::Error::from).and_then(|store| {
        let runtime = elasticfs_runtime()?;
        Ok(survey(None, &store, &runtime)?)
    });
    match listed {
        Ok(s) => json!({ "objects": s.objects, "bytes": s.bytes }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

pub(crate) fn elasticfs_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
