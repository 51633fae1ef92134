//! The throughput governor against real mounts and a real clock: a provisioned rate holds for
//! one mount and is shared by two, reads get three times the write allowance, and the figures
//! EFS publishes move with the bytes. (The EFS bursting table itself is reproduced on a
//! simulated clock in `metadata/src/throughput.rs`.)
//!
//! These tests time what the governor is for: transfers held to a rate far below what this
//! machine can do (20 MiB/s), so a slow machine cannot make them fail, with EFS's own ±15%.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use elasticfs_tests::{drop_page_cache, fuse_available, write_mib, MetaService, S3Server, Volume};

const MIB: usize = 1 << 20;
const RATE: f64 = 20.0;

/// Writes `mib` MiB to `path` (see [`write_mib`]); returns how long it took.
fn write_file(path: &Path, mib: usize, seed: u64) -> Duration {
    let start = Instant::now();
    write_mib(path, mib, seed);
    start.elapsed()
}

/// Reads `path` through, after dropping the kernel's page cache so that every byte is asked of
/// the file system; returns how long it took.
fn read_file(path: &Path) -> Duration {
    drop_page_cache();
    let start = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB];
    while f.read(&mut buf).unwrap() > 0 {}
    start.elapsed()
}

fn assert_takes(what: &str, took: Duration, expected_secs: f64) {
    let secs = took.as_secs_f64();
    assert!(
        (secs - expected_secs).abs() <= expected_secs * 0.15,
        "{what} took {secs:.2} s; at the provisioned rate it takes {expected_secs:.2} s ± 15%"
    );
}

#[test]
fn a_provisioned_rate_holds_for_writes_and_triples_for_reads() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let settings = vol.config(&["--throughput", "provisioned:20MiB"]);
    assert!(settings.contains("provisioned:20MiB/s"), "{settings}");
    let mount = vol.mount();
    let file = mount.path.join("big");
    assert_takes("writing 200 MiB", write_file(&file, 200, 1), 200.0 / RATE);
    assert_takes("reading 200 MiB", read_file(&file), 200.0 / 3.0 / RATE);

    // The figures EFS publishes, as the mount reports them (it publishes every 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let t = &vol.status()["throughput"];
    assert_eq!(t["mode"], "provisioned:20MiB/s", "{t}");
    assert_eq!(t["permitted_throughput"], 20 * MIB as u64, "{t}");
    let (read, written) =
        (t["data_read_io_bytes"].as_u64().unwrap(), t["data_write_io_bytes"].as_u64().unwrap());
    assert_eq!(written, 200 * MIB as u64, "{t}");
    assert_eq!(read, 200 * MIB as u64, "{t}");
    let metered = t["metered_io_bytes"].as_u64().unwrap();
    let expected = written + read / 3;
    assert!(metered >= expected && metered < expected + 4 * MIB as u64, "metered {metered}: {t}");
    assert!(t["metadata_io_bytes"].as_u64().unwrap() >= 4096, "{t}");
    assert_eq!(t["storage_bytes"], 200 * MIB as u64, "{t}");
    mount.unmount();
}

#[test]
fn mounts_share_the_file_systems_rate() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start("5s");
    let vol = Volume::shared(&service, &s3);
    vol.config(&["--throughput", "provisioned:20MiB"]);
    let mounts = [vol.mount_named("a", "", None), vol.mount_named("b", "", None)];
    let start = Instant::now();
    let writers: Vec<_> = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = m.path.join(format!("from-{i}"));
            std::thread::spawn(move || write_file(&path, 100, i as u64))
        })
        .collect();
    let each: Vec<Duration> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    // Together they move 200 MiB at the file system's 20 MiB/s, and neither is starved.
    assert_takes("two mounts writing 100 MiB each", start.elapsed(), 200.0 / RATE);
    for took in &each {
        assert!(took.as_secs_f64() > 100.0 / RATE, "a mount alone got more than the whole rate: {each:?}");
    }
    for m in mounts {
        m.unmount();
    }
}
