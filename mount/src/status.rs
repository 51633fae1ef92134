//! `elasticfs status` and `elasticfs fsck`. An embedded store is locked by the process that
//! mounts it, so a mount also publishes its figures in `status.json` beside the store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::{Superblock, Usage, FORMAT_VERSION};
use elasticfs_core::{connect_chunk_store, FileSystem};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::volume::{self, MetaUrl};

fn status_file(meta_url: &str) -> Result<PathBuf> {
    let MetaUrl::Sled(path) = MetaUrl::parse(meta_url)?;
    Ok(path.join("status.json"))
}

fn report(sb: &Superblock, usage: Usage, mount: Option<serde_json::Value>) -> serde_json::Value {
    json!({
        "name": sb.name,
        "uuid": sb.uuid,
        "format_version": sb.format_version,
        "block_size": sb.block_size,
        "inline_threshold": sb.inline_threshold,
        "storage": sb.storage,
        "used_bytes": usage.bytes,
        "used_inodes": usage.inodes,
        "mount": mount,
    })
}

/// Keeps `status.json` current while a mount runs.
pub struct StatusWriter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl StatusWriter {
    pub fn start(fs: Arc<FileSystem>, meta_url: &str, mountpoint: &Path) -> Result<Self> {
        let path = status_file(meta_url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, file) = (stop.clone(), path.clone());
        let mountpoint = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Ok(usage) = fs.statfs() {
                    let mount = json!({
                        "mountpoint": mountpoint,
                        "pid": std::process::id(),
                        "cache_bytes": fs.chunks().cache().size(),
                        "disk_cache": fs.chunks().disk_cache().map(|d| json!({
                            "dir": d.dir(),
                            "bytes": d.size(),
                        })),
                        "updated_secs": elasticfs_core::metadata::Timestamp::now().secs,
                    });
                    let doc = report(fs.meta().superblock(), usage, Some(mount));
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
        Ok(StatusWriter { stop, thread: Some(thread), path })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn status(meta_url: &str, as_json: bool) -> Result<()> {
    let doc = match volume::open_meta(meta_url) {
        Ok(meta) => report(meta.superblock(), meta.usage()?, None),
        Err(e) => {
            // Locked by a running mount: show what it publishes.
            let file = status_file(meta_url)?;
            let text = std::fs::read_to_string(&file).map_err(|_| e)?;
            serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?
        }
    };
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
    match doc["mount"].as_object() {
        Some(m) => {
            println!("mounted         at {} by pid {}", m["mountpoint"], m["pid"]);
            println!("memory cache    {} bytes", m["cache_bytes"]);
            match m["disk_cache"].as_object() {
                Some(d) => println!("disk cache      {} bytes in {}", d["bytes"], d["dir"]),
                None => println!("disk cache      off"),
            }
        }
        None => println!("mounted         no"),
    }
    Ok(())
}

pub fn fsck(meta_url: &str, verify_data: bool) -> Result<()> {
    let meta = volume::open_meta(meta_url)?;
    let chunks = connect_chunk_store(&meta.superblock().storage, 64 << 20)?;
    let runtime = elasticfs_runtime()?;
    let referenced = meta.referenced_chunks()?;
    let bar = ProgressBar::new(referenced.len() as u64);
    bar.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} chunks ({eta})")?);
    bar.set_message(if verify_data { "verifying" } else { "checking" });
    let (mut missing, mut corrupt) = (0u64, 0u64);
    for (hash, _refs) in &referenced {
        let name = hex::encode(hash);
        // With --verify-data one GET both proves the object exists and checks its hash; only a
        // failed GET needs a HEAD to tell a missing object from a corrupt one.
        let fetched = if verify_data { runtime.block_on(chunks.get(*hash)).err() } else { None };
        let present =
            if verify_data && fetched.is_none() { true } else { runtime.block_on(chunks.exists(hash))? };
        if !present {
            bar.println(format!("missing chunk {name}"));
            missing += 1;
        } else if let Some(e) = fetched {
            bar.println(format!("bad chunk {name}: {e}"));
            corrupt += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let unreferenced = meta.unreferenced_chunks()?.len();
    println!(
        "{} referenced chunks: {missing} missing, {corrupt} corrupt; {unreferenced} unreferenced (left for gc)",
        referenced.len()
    );
    if missing + corrupt > 0 {
        bail!("fsck found {} damaged chunk references", missing + corrupt);
    }
    Ok(())
}

fn elasticfs_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
