//! The engine never waits on the object store or the metadata while holding a file: with a
//! flush stalled on an upload (the test S3 server holds PUTs back), `stat` of the file, reads
//! through other handles and other writes complete; and threads that write, read, flush and
//! stat one file at once each read back exactly what they wrote.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use elasticfs_core::metadata::{MetaStore, SledStore, Superblock, ROOT_INO};
use elasticfs_core::{open_object_store, Caller, ChunkStore, CreateMode, FileSystem, FsConfig};
use elasticfs_tests::{pattern, S3Server, S3_BUCKET};

const ROOT: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: u64 = 256 << 10;
/// How long a call that must not wait on the stalled upload is given: far longer than it takes,
/// far shorter than forever. Not a timing assertion: only "it completed while the PUT was held".
const PATIENCE: Duration = Duration::from_secs(60);

/// An engine on a sled store in `dir`, its chunks in `server`'s bucket over HTTP.
fn engine(server: &S3Server, dir: &tempfile::TempDir, config: FsConfig) -> Arc<FileSystem> {
    for (key, value) in server.env() {
        std::env::set_var(key, value);
    }
    let url = format!("s3://{S3_BUCKET}?endpoint=http://127.0.0.1:{}", server.port);
    let sb = Superblock::new("concurrency", BLOCK as u32, 1024, &url);
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
    let chunks = ChunkStore::new(open_object_store(&url).unwrap(), 64 << 20);
    Arc::new(FileSystem::new(meta, chunks, config).unwrap())
}

/// Runs `call` on a thread of its own and returns what it returned, failing the test if it has
/// not returned within [`PATIENCE`] (it is waiting on something it must not wait on).
fn completes<T: Send + 'static>(what: &str, call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("{what} waited on the stalled upload"))
}

#[test]
fn stat_reads_and_writes_go_on_while_a_flush_is_stalled() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let fs = engine(&server, &dir, FsConfig { max_uploads: 2, ..FsConfig::default() });
    let (attr, writer) = fs.create(ROOT_INO, b"f", 0o644, ROOT, CreateMode::Exclusive, false).unwrap();
    let mut expected = pattern(1, (BLOCK * 3) as usize);
    fs.write(writer, 0, &expected).unwrap();
    fs.fsync(writer).unwrap();

    // A write in place, then its flush, which stalls on the upload of its slice.
    let patch = pattern(2, 64 << 10);
    fs.write(writer, 1000, &patch).unwrap();
    expected[1000..1000 + patch.len()].copy_from_slice(&patch);
    server.hold_puts_after(0);
    let flushing = {
        let fs = fs.clone();
        thread::spawn(move || fs.fsync(writer))
    };
    while server.held_puts() == 0 {
        thread::sleep(Duration::from_millis(10));
    }

    let stat = completes("stat", {
        let fs = fs.clone();
        move || fs.getattr(attr.ino).unwrap()
    });
    assert_eq!(stat.size, BLOCK * 3);
    let reader = fs.open(attr.ino, false).unwrap();
    let read = completes("a read through another handle", {
        let fs = fs.clone();
        move || fs.read(reader, 0, (BLOCK * 3) as u32).unwrap().into_vec()
    });
    assert!(read == expected, "the read sees the flush's bytes and the committed ones");
    // Another write goes into the buffer above the flush's layer, and reads see it on top.
    let again = pattern(3, 4096);
    completes("a write through another handle", {
        let (fs, again) = (fs.clone(), again.clone());
        move || fs.write(reader, 1000 + 8192, &again).unwrap()
    });
    expected[1000 + 8192..1000 + 8192 + again.len()].copy_from_slice(&again);
    let read = completes("a read of the newer write", {
        let fs = fs.clone();
        move || fs.read(reader, 0, (BLOCK * 3) as u32).unwrap().into_vec()
    });
    assert!(read == expected, "the newer write lies over the flush's layer");
    assert!(server.held_puts() > 0 && !flushing.is_finished(), "the flush was stalled throughout");

    server.release_puts();
    flushing.join().unwrap().unwrap();
    fs.fsync(reader).unwrap();
    fs.release(reader).unwrap();
    fs.release(writer).unwrap();
    let fresh = fs.open(attr.ino, false).unwrap();
    assert!(fs.read(fresh, 0, (BLOCK * 3) as u32).unwrap().into_vec() == expected);
    fs.release(fresh).unwrap();
    let audit = fs.meta().audit().unwrap();
    assert!(audit.is_clean(), "{:#?}", audit.findings);
}

/// Threads that each own every `THREADS`-th 4 KiB stripe of one file write their stripes at
/// random, read them back, flush and stat, all at once: each read returns what its thread
/// wrote last (through flushes' layers and commits), and so does the file at the end.
#[test]
fn writers_readers_and_flushes_of_one_file_at_once() {
    const THREADS: usize = 4;
    const STRIPE: usize = 4096;
    const STRIPES: usize = 96; // 384 KiB: a block and a half, every block shared by all threads
    const ROUNDS: usize = 1000;
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    // A write buffer of a few stripes: writes keep making room by flushing, beside the fsyncs.
    let config = FsConfig { max_uploads: 2, write_buffer_bytes: 16 * STRIPE, ..FsConfig::default() };
    let fs = engine(&server, &dir, config);
    let (attr, first) = fs.create(ROOT_INO, b"shared", 0o644, ROOT, CreateMode::Exclusive, false).unwrap();
    fs.write(first, 0, &vec![0u8; STRIPE * STRIPES]).unwrap();
    fs.fsync(first).unwrap();

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let fs = fs.clone();
            thread::spawn(move || {
                let fh = fs.open(attr.ino, false).unwrap();
                let mine: Vec<usize> = (t..STRIPES).step_by(THREADS).collect();
                let mut last = vec![0u8; mine.len()];
                let mut rng = t as u64 * 7919 + 1;
                let mut next = |n: u64| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (rng >> 33) % n
                };
                for round in 0..ROUNDS {
                    let k = next(mine.len() as u64) as usize;
                    let fill = (round % 250 + 1) as u8;
                    fs.write(fh, (mine[k] * STRIPE) as u64, &[fill; STRIPE]).unwrap();
                    last[k] = fill;
                    let k = next(mine.len() as u64) as usize;
                    let got = fs.read(fh, (mine[k] * STRIPE) as u64, STRIPE as u32).unwrap().into_vec();
                    assert!(
                        got == [last[k]; STRIPE],
                        "thread {t} round {round}: stripe {} lost its bytes",
                        mine[k]
                    );
                    match next(8) {
                        0 => fs.fsync(fh).unwrap(),
                        1 => assert_eq!(fs.getattr(attr.ino).unwrap().size, (STRIPE * STRIPES) as u64),
                        _ => {}
                    }
                }
                fs.release(fh).unwrap();
                (mine, last)
            })
        })
        .collect();
    let mut expected = vec![0u8; STRIPE * STRIPES];
    for worker in workers {
        let (mine, last) = worker.join().unwrap();
        for (stripe, fill) in mine.into_iter().zip(last) {
            expected[stripe * STRIPE..(stripe + 1) * STRIPE].fill(fill);
        }
    }
    fs.release(first).unwrap();
    let fresh = fs.open(attr.ino, false).unwrap();
    assert!(fs.read(fresh, 0, (STRIPE * STRIPES) as u32).unwrap().into_vec() == expected);
    fs.release(fresh).unwrap();
    let audit = fs.meta().audit().unwrap();
    assert!(audit.is_clean(), "{:#?}", audit.findings);
}
