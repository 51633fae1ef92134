//! `elasticfs gc`: one garbage collection, with a progress bar.

use std::time::Duration;

use anyhow::Result;
use elasticfs_core::gc::{collect, GcOptions};
use elasticfs_core::{connect_object_store, Ownership};
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::human_bytes;
use crate::status::{elasticfs_runtime, open_unmounted};
use crate::volume::MetaAccess;

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
