//! Writes in place with fsyncs between them (what databases and images do): each fsync
//! uploads about what was written, as slices, and compaction folds them back at a bounded
//! cost; nothing fsynced is lost to a crash at any point (the test S3 server holds an upload
//! back to stop the mount in the middle of an fsync's, or of a compaction's); another mount
//! reads each fsynced state byte-exact while compactions run.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use elasticfs_tests::etcd::{etcd_available, EtcdCluster};
use elasticfs_tests::nfs::*;
use elasticfs_tests::{
    detach, dir_bytes, elasticfs, fio, fio_available, free_disk_bytes, fuse_available, leaked_objects,
    pattern, S3Server, Volume,
};
use nfs3_client::nfs3_types::nfs3::stable_how;

const FILE: u64 = 64 << 20;
const PIECE: usize = 4096;
/// The bound: a file's first layout plus this many times the bytes written at random.
const UPLOAD_BOUND: u64 = 6;

/// What gc leaves is exactly what the files reference, and every byte of it verifies.
fn assert_collected_clean(vol: &Volume) {
    vol.assert_fsck_clean(true);
    elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &vol.env_refs());
    let report = vol.fsck(true);
    assert_eq!(leaked_objects(&report), 0, "{report}");
    vol.assert_fsck_clean(true);
}

#[test]
fn fsynced_random_writes_through_fuse_upload_about_what_was_written() {
    if !fuse_available() || !fio_available() {
        return;
    }
    let vol = Volume::local();
    let chunks = vol.dir.path().join("chunks");
    assert!(
        free_disk_bytes(vol.dir.path()) > (UPLOAD_BOUND + 2) * FILE,
        "not enough free disk for this test"
    );
    let mount = vol.mount();
    let file = mount.path.join("db");
    let size = format!("--size={FILE}");
    // The first layout: the whole file written in order (fio fills it), then closed.
    std::fs::write(&file, pattern(1, FILE as usize)).unwrap();
    let layout = dir_bytes(&chunks);
    // 16,384 writes of 4 KiB at random, an fsync after every 16: 1,024 fsyncs.
    let out = fio(&file, &[&size, "--fsync=16", "--do_verify=0", "--overwrite=1"]);
    assert!(out.contains("err= 0"), "{out}");
    mount.unmount();
    let stored = dir_bytes(&chunks);
    eprintln!("layout {layout} bytes; after {FILE} bytes written at random with fsyncs: {stored}");
    assert!(
        stored <= layout + UPLOAD_BOUND * FILE,
        "{stored} bytes stored: more than the layout ({layout}) and {UPLOAD_BOUND}x the {FILE} bytes written"
    );

    let mount = vol.mount();
    let out = fio(&mount.path.join("db"), &[&size, "--verify_only"]);
    assert!(out.contains("err= 0"), "{out}");
    mount.unmount();
    assert_collected_clean(&vol);
}

#[tokio::test(flavor = "multi_thread")]
async fn fsynced_random_writes_through_the_gateway_upload_about_what_was_written() {
    let vol = Volume::local();
    let chunks = vol.dir.path().join("chunks");
    assert!(
        free_disk_bytes(vol.dir.path()) > (UPLOAD_BOUND + 2) * FILE,
        "not enough free disk for this test"
    );
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let file = create(&mut nfs, &root, "db", 0o644).await.unwrap();
    let mut model = pattern(2, FILE as usize);
    for (i, part) in model.chunks(1 << 20).enumerate() {
        write(&mut nfs, &file, (i as u64) << 20, part, stable_how::UNSTABLE).await.unwrap();
    }
    commit(&mut nfs, &file).await.unwrap();
    let layout = dir_bytes(&chunks);
    // As a database would send them: 4 KiB UNSTABLE writes at random places, a COMMIT after
    // every 16.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let pieces = FILE / PIECE as u64;
    for i in 0..pieces {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % pieces) * PIECE as u64;
        let data = pattern(100 + i, PIECE);
        write(&mut nfs, &file, offset, &data, stable_how::UNSTABLE).await.unwrap();
        model[offset as usize..offset as usize + PIECE].copy_from_slice(&data);
        if i % 16 == 15 {
            commit(&mut nfs, &file).await.unwrap();
        }
    }
    commit(&mut nfs, &file).await.unwrap();
    drop(nfs);
    gw.stop();
    let stored = dir_bytes(&chunks);
    eprintln!("layout {layout} bytes; after {FILE} bytes written at random with COMMITs: {stored}");
    assert!(stored <= layout + UPLOAD_BOUND * FILE, "{stored} bytes stored (layout {layout})");

    gw.restart();
    let back = read_back(gw.port, "db").await;
    assert!(back == model, "the file read back differs from what was written");
    gw.stop();
    assert_collected_clean(&vol);
}

/// A writer of 4 KiB pieces at random places in a file, an fsync after every 16. It keeps
/// what each piece held at the last fsync that returned, and what was written to it since.
struct Writer {
    pieces: usize,
    /// Seed of each piece's content (see [`pattern`]) as of the last fsync.
    durable: Vec<u64>,
    /// Pieces written since, with their seeds.
    since: Vec<(usize, u64)>,
    next_seed: u64,
    state: u64,
}

impl Writer {
    fn lay_out(path: &Path, pieces: usize) -> Writer {
        let mut f = std::fs::File::create(path).unwrap();
        for p in 0..pieces {
            f.write_all(&pattern(p as u64, PIECE)).unwrap();
        }
        f.sync_all().unwrap();
        Writer {
            pieces,
            durable: (0..pieces as u64).collect(),
            since: Vec::new(),
            next_seed: 1 << 32,
            state: 0x2545_f491_4f6c_dd1d,
        }
    }

    /// Writes and fsyncs until the file system fails (its mount was killed) or `fsyncs` are done.
    fn run(&mut self, path: &Path, fsyncs: usize) -> usize {
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else { return 0 };
        for done in 0..fsyncs {
            if self.write(&f, 16, self.pieces).is_err() || self.fsync(&f).is_err() {
                return done;
            }
        }
        fsyncs
    }

    /// `count` writes of a piece, each at random among the first `within` pieces.
    fn write(&mut self, f: &std::fs::File, count: usize, within: usize) -> std::io::Result<()> {
        for _ in 0..count {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let piece = (self.state % within as u64) as usize;
            let seed = self.next_seed;
            self.next_seed += 1;
            self.since.push((piece, seed));
            f.write_all_at(&pattern(seed, PIECE), (piece * PIECE) as u64)?;
        }
        Ok(())
    }

    /// An fsync; what it covered is durable once it returns.
    fn fsync(&mut self, f: &std::fs::File) -> std::io::Result<()> {
        f.sync_all()?;
        for (piece, seed) in self.since.drain(..) {
            self.durable[piece] = seed;
        }
        Ok(())
    }

    /// Every piece holds what it held at the last fsync, or something written since.
    fn check(&mut self, path: &Path) {
        let mut f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; PIECE];
        for p in 0..self.pieces {
            f.read_exact(&mut buf).unwrap();
            let candidates: Vec<u64> = std::iter::once(self.durable[p])
                .chain(self.since.iter().filter(|s| s.0 == p).map(|s| s.1))
                .collect();
            let found = candidates.iter().find(|&&seed| pattern(seed, PIECE) == buf);
            let Some(&seed) = found else {
                panic!("piece {p} holds neither its fsynced content nor anything written since");
            };
            self.durable[p] = seed;
        }
        assert!(f.seek(SeekFrom::End(0)).unwrap() == (self.pieces * PIECE) as u64);
        self.since.clear();
    }
}

#[test]
fn sigkill_amid_slice_fsyncs_and_compactions_loses_nothing_fsynced() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    // 16 blocks of 1 MiB: 16 writes per fsync lay a slice on most blocks every fsync, so a block
    // reaches 16 slices (and is compacted in the background) every 16 fsyncs or so, and some
    // compaction is nearly always under way when the mount dies.
    let pieces = (16 << 20) / PIECE;
    let mut mount = vol.mount();
    let root = mount.path.clone();
    let mut writer = Writer::lay_out(&root.join("db"), pieces);
    for round in 0..4u64 {
        let pid = mount.pid().to_string();
        let killer = std::thread::spawn(move || {
            // Somewhere in the middle of the loop: each fsync takes a few milliseconds.
            std::thread::sleep(Duration::from_millis(600 + 400 * round));
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        });
        let done = writer.run(&root.join("db"), 1_000_000);
        killer.join().unwrap();
        eprintln!("round {round}: {done} fsyncs before the kill");
        assert!(done > 10, "round {round}: only {done} fsyncs before the kill");
        mount.kill();
        // The writer saw ENOTCONN and stopped; only now is the dead mount detached.
        detach(&root);
        let again = vol.mount_at(&root);
        writer.check(&root.join("db"));
        again.unmount();
        vol.assert_fsck_clean(true);
        mount = vol.mount_at(&root);
    }
    mount.unmount();
    assert_collected_clean(&vol);
}

#[test]
fn another_mount_reads_each_fsynced_state_while_compactions_run() {
    if !fuse_available() || !etcd_available() {
        return;
    }
    let s3 = S3Server::start();
    let cluster = EtcdCluster::start();
    let vol = Volume::etcd(&cluster, "slices", &s3, 10);
    let (writer, reader) = (vol.mount_named("writer", "", None), vol.mount_named("reader", "", None));
    // Four blocks: 16 writes a round lay about four slices on each, so each is compacted every
    // few rounds, between the reader's reads.
    let mut model = pattern(3, 4 << 20);
    std::fs::write(writer.path.join("f"), &model).unwrap();
    let mut state = 0x1234_5678_9abc_def1u64;
    for round in 0..64u64 {
        let f = std::fs::OpenOptions::new().write(true).open(writer.path.join("f")).unwrap();
        for i in 0..16 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = (state % (model.len() as u64 - PIECE as u64)) as usize;
            let data = pattern(round * 16 + i + 1000, PIECE);
            f.write_all_at(&data, offset as u64).unwrap();
            model[offset..offset + PIECE].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
        drop(f);
        // Close-to-open: opened after the writer's close, the reader sees all of it.
        let got = std::fs::read(reader.path.join("f")).unwrap();
        assert!(got == model, "round {round}: the reader's copy differs from what was fsynced");
    }
    writer.unmount();
    reader.unmount();
    vol.assert_fsck_clean(true);
}

/// A file of 4 MiB laid out through a mount whose S3 server can hold its uploads back, for the
/// two tests below.
fn held_mount() -> (S3Server, Volume, elasticfs_tests::Mount, std::path::PathBuf, Writer) {
    let s3 = S3Server::start();
    let vol = Volume::s3(&s3);
    let mount = vol.mount();
    let path = mount.path.join("db");
    let writer = Writer::lay_out(&path, (4 << 20) / PIECE);
    (s3, vol, mount, path, writer)
}

/// Waits until `s3` holds an upload back, failing with `otherwise` after 60 s. `nudge` runs
/// every second until then.
fn wait_for_a_held_upload(s3: &S3Server, otherwise: &str, nudge: impl Fn()) {
    let start = Instant::now();
    let mut nudged = start;
    while s3.held_puts() == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "{otherwise}");
        if nudged.elapsed() >= Duration::from_secs(1) {
            nudge();
            nudged = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the first page of `path` past the page cache (O_DIRECT), so that the mount reads the
/// file's blocks from the metadata, and starts compacting those that want it: a compactor
/// already running its most compactions passes a block over at its commit, and the next
/// commit or read of it asks again.
fn read_its_blocks(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) else {
        return;
    };
    let mut raw = vec![0u8; 2 * PIECE];
    let at = raw.as_ptr().align_offset(PIECE);
    let _ = f.read_at(&mut raw[at..at + PIECE], 0);
}

/// Kills `mount` (which `writer` was writing through), lets uploads through again, remounts
/// and checks that every piece holds what its last fsync left or what was written since.
fn kill_and_check(s3: &S3Server, vol: &Volume, mount: elasticfs_tests::Mount, writer: &mut Writer) {
    let root = mount.path.clone();
    mount.kill();
    detach(&root);
    s3.release_puts();
    let again = vol.mount_at(&root);
    writer.check(&root.join("db"));
    again.unmount();
    assert_collected_clean(vol);
}

#[test]
fn sigkill_in_the_middle_of_an_fsync_that_uploads_slices_loses_nothing_fsynced() {
    if !fuse_available() {
        return;
    }
    let (s3, vol, mount, path, mut writer) = held_mount();
    assert_eq!(writer.run(&path, 20), 20);
    // The next fsync's upload of its slices is held: the fsync waits in the middle.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    writer.write(&f, 16, writer.pieces).unwrap();
    s3.hold_puts_after(0);
    let fsync = std::thread::spawn(move || f.sync_all().is_ok());
    wait_for_a_held_upload(&s3, "the fsync never uploaded", || {});
    assert!(!fsync.is_finished(), "the fsync returned with its upload held");
    kill_and_check(&s3, &vol, mount, &mut writer);
    assert!(!fsync.join().unwrap(), "an fsync whose mount died reports an error");
}

#[test]
fn sigkill_in_the_middle_of_a_compaction_loses_nothing_fsynced() {
    if !fuse_available() {
        return;
    }
    let (s3, vol, mount, path, mut writer) = held_mount();
    // Fifteen fsyncs of one write each into the first block: fifteen slices on it.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let first_block = (1 << 20) / PIECE;
    for _ in 0..15 {
        writer.write(&f, 1, first_block).unwrap();
        writer.fsync(&f).unwrap();
    }
    // Background compactions the first fifteen started upload first (else one of their PUTs
    // could take the sixteenth's one pass below, and hold its fsync instead): the bucket
    // stops growing. Bounded; nothing is asserted of the time.
    let mut last = (s3.bucket_objects(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(30);
    while last.1.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = s3.bucket_objects();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    // The sixteenth's slice is let through; the compaction it starts uploads next, and waits.
    s3.hold_puts_after(1);
    writer.write(&f, 1, first_block).unwrap();
    writer.fsync(&f).unwrap();
    wait_for_a_held_upload(&s3, "no compaction started after 16 slices", || read_its_blocks(&path));
    drop(f);
    kill_and_check(&s3, &vol, mount, &mut writer);
}

#[test]
fn a_file_rewritten_whole_in_place_gets_whole_blocks_not_slices() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let path = mount.path.join("f");
    // Two and a half blocks, then every byte of it written again without truncating (as `dd
    // conv=notrunc` or an editor saving in place does).
    std::fs::write(&path, pattern(1, 5 << 19)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&pattern(2, 5 << 19), 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // No slice was uploaded (to be compacted into a new block afterwards) for the last block,
    // half full, which the rewrite covered too. The mount publishes its counters every 2 s.
    std::thread::sleep(Duration::from_millis(2500));
    let client = &vol.status()["mount"]["client"];
    assert_eq!(client["slice_bytes"].as_u64(), Some(0), "{client}");
    mount.unmount();
    let report = vol.fsck(true);
    assert!(report.contains("in 3 blocks (0 slices laid over them)"), "{report}");
    let mount = vol.mount();
    assert!(std::fs::read(mount.path.join("f")).unwrap() == pattern(2, 5 << 19));
    mount.unmount();
}
