//! `elasticfs gc`: one garbage collection, with a progress bar.

use std::time::Duration;

use anyhow::Result;
use elasticfs_core::gc::{collect, BackgroundGc, GcOptions};
use elasticfs_core::FileSystem;
use elasticfs_core::{connect_object_store, Ownership};
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::human_bytes;
use crate::options::MountOptions;
use crate::status::{elasticfs_runtime, open_unmounted};
use crate::volume::{MetaAccess, MetaUrl};

/// Background collection, every `gc-interval` (0: never), for a client (a mount, a gateway)
/// with no metadata service to collect for it: one that holds an embedded store, or a client
/// of etcd. Any number of etcd clients may collect at once: condemning a chunk is a
/// transaction that sees every reference and every upload intent, and deleting an object
/// twice is harmless.
pub fn start_client_gc(
    fs: &FileSystem,
    access: &MetaAccess,
    opts: &MountOptions,
) -> Result<Option<BackgroundGc>> {
    let served = matches!(MetaUrl::parse(&access.url)?, MetaUrl::Service { .. });
    if served || opts.gc_interval.is_zero() {
        return Ok(None);
    }
    let target = (fs.meta().clone(), fs.chunks().object_store().clone());
    Ok(Some(BackgroundGc::start(
        opts.gc_interval,
        opts.gc_grace,
        Box::new(move || Ok(Some(target.clone()))),
    )?))
}

pub fn gc(access: &MetaAccess, dry_run: bool, grace: Duration) -> Result<()> {
    let meta = open_unmounted(
        access,
        "elasticfs gc needs the metadata store to itself; a mount of an embedded store collects \
         its own garbage (every hour; -o gc-interval=, gc-grace=): unmount it to collect now",
    )?;
    let store = connect_object_store(&meta.superblock().storage, Ownership::Check(meta.superblock()))?;
    let runtime = elasticfs_runtime()?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} chunks ({eta})")?);
    bar.set_message(if dry_run { "counting" } else { "deleting" });
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = collect(&meta, &store, &runtime, GcOptions { grace, dry_run }, &progress)?;
    bar.finish_and_clear();
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} chunks ({}): {} unreferenced for over {grace:?}, {} leaked objects; {} kept for now",
        report.deleted,
        human_bytes(report.freed_bytes),
        report.unreferenced,
        report.leaked,
        report.kept
    );
    Ok(())
}
