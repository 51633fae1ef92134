//! `elasticfs fsck`: the metadata audited (every record recounted against the counters, link
//! counts and chunk reference counts; see `MetaStore::audit`), then every referenced chunk's
//! object checked (and, with `--verify-data`, hashed), with a progress bar. It reports what a
//! repair would do and changes nothing.

use std::collections::HashSet;

use anyhow::{bail, Result};
use elasticfs_core::gc::survey;
use elasticfs_core::metadata::audit::Audit;
use elasticfs_core::metadata::ChunkHash;
use elasticfs_core::{connect_chunk_store, Ownership};
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::human_bytes;
use crate::status::{elasticfs_runtime, open_unmounted};
use crate::volume::MetaAccess;

pub fn fsck(access: &MetaAccess, verify_data: bool) -> Result<()> {
    let meta = open_unmounted(access, "elasticfs fsck needs the embedded store to itself: unmount it first")?;
    let spinner = ProgressBar::new_spinner().with_message("auditing the metadata (changes wait meanwhile)");
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let audit = meta.audit();
    spinner.finish_and_clear();
    let audit = audit?;
    report_audit(&audit);

    let chunks =
        connect_chunk_store(&meta.superblock().storage, 64 << 20, Ownership::Check(meta.superblock()))?;
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
    let unreferenced = meta.unreferenced_chunks()?;
    println!(
        "{} referenced chunks: {missing} missing, {corrupt} corrupt; {} unreferenced (left for gc)",
        referenced.len(),
        unreferenced.len()
    );
    let known: HashSet<ChunkHash> =
        referenced.iter().map(|(hash, _)| *hash).chain(unreferenced.iter().map(|(hash, _)| *hash)).collect();
    let bucket = survey(Some(&known), chunks.object_store(), &runtime)?;
    println!(
        "bucket: {} objects, {}; {} objects ({}) that nothing references: uploads never committed \
         (gc deletes them once older than its grace period)",
        bucket.objects,
        human_bytes(bucket.bytes),
        bucket.leaked_objects,
        human_bytes(bucket.leaked_bytes)
    );
    if missing + corrupt > 0 {
        println!(
            "damaged chunks cannot be rebuilt from the metadata: restore their objects from a copy of \
             the bucket, or delete the files that use them (reads of those blocks fail with EIO)"
        );
    }
    match (audit.total_findings(), missing + corrupt) {
        (0, 0) => Ok(()),
        (0, damaged) => bail!("fsck found {damaged} damaged chunk references"),
        (findings, 0) => bail!("fsck found {findings} inconsistencies in the metadata (nothing was changed)"),
        (findings, damaged) => bail!(
            "fsck found {findings} inconsistencies in the metadata and {damaged} damaged chunk references \
             (nothing was changed)"
        ),
    }
}

fn report_audit(audit: &Audit) {
    for finding in &audit.findings {
        println!("{finding}");
    }
    if audit.more_findings > 0 {
        println!("… and {} more findings", audit.more_findings);
    }
    println!(
        "metadata: {} inodes and {} bytes in {} blocks ({} slices laid over them) over {} distinct chunks; \
         the counters say {} inodes and {} bytes: {}",
        audit.counted.inodes,
        audit.counted.bytes,
        audit.blocks,
        audit.slices,
        audit.chunks,
        audit.counters.inodes,
        audit.counters.bytes,
        match audit.total_findings() {
            0 => "consistent".to_string(),
            n => format!("{n} findings, each with the repair it needs (fsck only reports)"),
        }
    );
}
