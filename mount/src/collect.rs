//! `elasticfs gc`: one garbage collection, with a progress bar.

use std::time::Duration;

use anyhow::{Context, Result};
use elasticfs_core::gc::{collect, GcOptions};
use elasticfs_core::open_object_store;
use indicatif::{ProgressBar, ProgressStyle};

use crate::throughput_spec::human_bytes;
use crate::volume::{self, MetaAccess, MetaUrl, Role};

pub fn gc(access: &MetaAccess, dry_run: bool, grace: Duration) -> Result<()> {
    let meta = volume::open_meta(access, Role::Tool).with_context(|| match MetaUrl::parse(&access.url) {
        Ok(MetaUrl::Sled(_)) => "elasticfs gc needs the metadata store to itself; a mount of an embedded \
            store collects its own garbage (every hour; -o gc-interval=, gc-grace=): unmount it to collect now"
            .to_string(),
        _ => "opening the metadata store".to_string(),
    })?;
    let store = open_object_store(&meta.superblock().storage)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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
