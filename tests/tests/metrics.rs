//! Prometheus metrics over real HTTP: a mount's `-o metrics=` and the metadata service's
//! `--metrics`, scraped while data moves. The counters must move as the bytes do.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use elasticfs_tests::{
    drop_page_cache, eventually, free_port, fuse_available, scrape, write_mib, MetaService, S3Server, Volume,
};

const MIB: f64 = (1 << 20) as f64;

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series}; the endpoint has {samples:?}"))
}

#[test]
fn a_mounts_counters_move_with_its_writes_and_reads() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    // At 20 MiB/s the 60 MiB write takes about 3 s: time for a dozen scrapes during it.
    vol.config(&["--throughput", "provisioned:20MiB"]);
    let port = free_port();
    let mount = vol.mount_with(&format!("metrics=127.0.0.1:{port}"), None);
    assert_eq!(sample(&scrape(port), "elasticfs_client_written_bytes_total"), 0.0);

    let file = mount.path.join("data");
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || write_mib(&file, 60, 7))
    };
    let mut during = Vec::new();
    while !writer.is_finished() {
        during.push(scrape(port));
        std::thread::sleep(Duration::from_millis(250));
    }
    writer.join().unwrap();

    // Scraped during the write: this client's bytes and the file system's metered write bytes
    // only ever grow, and were seen part-way, not just at 0 and at the end.
    for series in ["elasticfs_client_written_bytes_total", "elasticfs_data_write_io_bytes_total"] {
        let values: Vec<f64> = during.iter().map(|s| sample(s, series)).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{series} went backwards: {values:?}");
        let part_way = values.iter().filter(|v| **v > 0.0 && **v < 60.0 * MIB).count();
        assert!(part_way >= 2, "{series} did not move during the write: {values:?}");
    }

    // Once the client has reported its last I/O (it does every second), every figure agrees
    // with the 60 MiB written.
    let after = |series: &str, want: f64| eventually(5, || sample(&scrape(port), series) == want);
    assert!(after("elasticfs_data_write_io_bytes_total", 60.0 * MIB), "{:?}", scrape(port));
    assert!(after("elasticfs_storage_bytes", 60.0 * MIB), "{:?}", scrape(port));
    let m = scrape(port);
    assert_eq!(sample(&m, "elasticfs_client_written_bytes_total"), 60.0 * MIB);
    assert!(sample(&m, "elasticfs_metered_io_bytes_total") >= 60.0 * MIB);
    assert!(sample(&m, "elasticfs_io_bytes_total") > 60.0 * MIB, "data plus metadata");
    assert_eq!(sample(&m, "elasticfs_permitted_throughput_bytes_per_second"), 20.0 * MIB);
    assert_eq!(sample(&m, "elasticfs_client_connections"), 1.0);
    assert_eq!(sample(&m, "elasticfs_file_system_up"), 1.0);
    assert!(sample(&m, r#"elasticfs_client_operation_seconds_count{op="write"}"#) >= 60.0);
    assert!(sample(&m, r#"elasticfs_client_operation_seconds_count{op="flush"}"#) >= 1.0);
    // 15 chunks of 4 MiB, each with its segment list.
    assert!(sample(&m, r#"elasticfs_object_store_requests_total{request="put"}"#) >= 15.0);
    assert_eq!(sample(&m, r#"elasticfs_object_store_errors_total{request="put"}"#), 0.0);
    // Written in whole blocks, each was uploaded as it filled: nothing is left in the buffer.
    assert_eq!(sample(&m, "elasticfs_client_write_buffer_bytes"), 0.0);
    // Held to 20 MiB/s, the client spent most of the write waiting for the governor.
    assert!(sample(&m, "elasticfs_client_throttled_seconds_total") > 1.0, "{m:?}");

    // A read from the file system (not the page cache): each of the 15 chunks is looked up.
    let lookups = |m: &HashMap<String, f64>| {
        sample(m, r#"elasticfs_cache_hits_total{cache="memory"}"#)
            + sample(m, r#"elasticfs_cache_misses_total{cache="memory"}"#)
    };
    let before_read = lookups(&m);
    drop_page_cache();
    let mut read = Vec::new();
    std::fs::File::open(&file).unwrap().read_to_end(&mut read).unwrap();
    assert_eq!(read.len() as f64, 60.0 * MIB);
    assert!(after("elasticfs_data_read_io_bytes_total", 60.0 * MIB), "{:?}", scrape(port));
    let m = scrape(port);
    assert_eq!(sample(&m, "elasticfs_client_read_bytes_total"), 60.0 * MIB);
    assert!(lookups(&m) >= before_read + 15.0, "{m:?}");
    // `elasticfs status` shows the same counts (the mount publishes them every 2 s).
    let shown = |key: &str| vol.status()["mount"]["client"][key].as_f64();
    assert!(eventually(5, || shown("read_bytes") == Some(60.0 * MIB)), "{}", vol.status());
    assert_eq!(shown("written_bytes"), Some(60.0 * MIB));
    mount.unmount();
}

#[test]
fn the_metadata_service_publishes_the_file_systems_figures() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let port = free_port();
    let service = MetaService::start_with("5s", &["--metrics", &format!("127.0.0.1:{port}")]);
    // Nothing formatted yet: the endpoint answers, and says there are no figures.
    let m = scrape(port);
    assert_eq!(sample(&m, "elasticfs_file_system_up"), 0.0);
    assert!(!m.contains_key("elasticfs_storage_bytes"), "{m:?}");

    let vol = Volume::shared(&service, &s3);
    let mount = vol.mount();
    write_mib(&mount.path.join("f"), 8, 3);
    let figure = |series: &str| sample(&scrape(port), series);
    assert!(
        eventually(5, || figure("elasticfs_data_write_io_bytes_total") == 8.0 * MIB),
        "{:?}",
        scrape(port)
    );
    assert!(eventually(5, || figure("elasticfs_storage_bytes") == 8.0 * MIB), "{:?}", scrape(port));
    assert_eq!(figure("elasticfs_client_connections"), 1.0);
    assert_eq!(figure("elasticfs_file_system_up"), 1.0);
    // The service has no client of its own: only the file system's figures.
    assert!(!scrape(port).keys().any(|k| k.starts_with("elasticfs_client_operation")));
    mount.unmount();
    assert!(eventually(5, || figure("elasticfs_client_connections") == 0.0), "{:?}", scrape(port));
}

#[test]
fn a_metrics_address_that_cannot_be_bound_fails_the_mount() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = vol.dir.path().join("mnt");
    std::fs::create_dir_all(&at).unwrap();
    let option = format!("metrics={}", taken.local_addr().unwrap());
    let err = elasticfs_tests::elasticfs_fails(
        &["mount", "--meta", &vol.meta, at.to_str().unwrap(), "-o", &option],
        &[],
    );
    assert!(err.contains("metrics address") && err.contains("cannot listen"), "{err}");
}
