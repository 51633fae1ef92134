//! Handing the kernel's page cache the window a random read fetched around the bytes it was
//! asked for (FUSE_NOTIFY_STORE), so that the neighbouring pages need no request of their own.
//!
//! A reader that advised POSIX_FADV_RANDOM (fio, databases) gets exactly the 4 KiB page it
//! missed from the kernel, one FUSE READ each, while the engine fetches and verifies the whole
//! 64 KiB segment around it anyway. Storing the segment fills sixteen pages per request.
//!
//! A store copies its bytes into the file's cached pages whatever they hold, and waits for
//! each page's lock to do it. So a store of bytes read before a change must never land after
//! the change:
//! - A write through this mount goes through the page cache (no writeback cache here): a late
//!   store would undo it. No store starts while the file has a handle open for writing.
//! - Opening a handle for writing, a truncate (a store past the new end would also move the
//!   kernel's size back), and dropping the cached pages because another client changed the
//!   file (close-to-open, taking a lock) are each a *section*: no store starts during it, it
//!   waits for the stores in flight before it answers the kernel, and it moves the file's
//!   epoch on at its start and its end. A window read under an earlier epoch is never stored.
//! - Deadlock: a store can wait for the lock of a page whose READ is still queued, which only
//!   a free FUSE worker can answer. A worker stores the window it read itself (it has the CPU
//!   then; a store thread fell behind the readers) only while fewer than half the workers are
//!   storing; otherwise the window goes to a thread of its own. And a section that must wait
//!   for a store waits on a thread of its own, never holding a worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use elasticfs_core::Window;
use fuser::{INodeNo, Notifier};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing::debug;

/// Windows waiting for the store thread; more are dropped (they are only an optimisation).
const QUEUE_LEN: usize = 64;

/// Where stores go: the kernel, through the session's notifier once it is mounted.
pub trait PageSink: Send + Sync + 'static {
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

impl PageSink for OnceLock<Notifier> {
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self.get() {
            Some(notifier) => notifier.store(INodeNo(ino), offset, data),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
pub struct PageFill {
    shared: Arc<Shared>,
    queue: SyncSender<Job>,
}

/// What became of the windows random reads offered.
#[derive(Clone, Default)]
pub struct PageFillMetrics {
    stored: Counter,
    stale: Counter,
    dropped: Counter,
}

impl PageFillMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fuse_page_fill_stored_windows",
            "Windows around random reads handed to the kernel's page cache",
            self.stored.clone(),
        );
        registry.register(
            "fuse_page_fill_stale_windows",
            "Windows not stored because their file changed or was open for writing",
            self.stale.clone(),
        );
        registry.register(
            "fuse_page_fill_dropped_windows",
            "Windows not stored because the store thread was behind",
            self.dropped.clone(),
        );
    }
}

struct Shared {
    files: Mutex<HashMap<u64, FileFill>>,
    /// Signalled when a file's last store in flight ends.
    drained: Condvar,
    /// Epochs are never reused, also across a file's entry being dropped and made again.
    next_epoch: AtomicU64,
    sink: Arc<dyn PageSink>,
    metrics: PageFillMetrics,
    /// How many more workers may store a window themselves.
    inline_stores: AtomicUsize,
}

/// What this mount has open of one file, and the stores that concern it.
struct FileFill {
    handles: u32,
    writers: u32,
    sections: u32,
    stores_in_flight: u32,
    epoch: u64,
}

struct Job {
    ino: u64,
    epoch: u64,
    window: Window,
}

impl PageFill {
    /// For a session of `workers` FUSE worker threads.
    pub fn new(sink: Arc<dyn PageSink>, metrics: PageFillMetrics, workers: usize) -> Self {
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            next_epoch: AtomicU64::new(1),
            sink,
            metrics,
            inline_stores: AtomicUsize::new(workers / 2),
        });
        let (queue, jobs) = sync_channel(QUEUE_LEN);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("page-fill".into())
            .spawn(move || worker.store_all(jobs))
            .expect("spawning the page-fill thread");
        PageFill { shared, queue }
    }

    /// A handle was opened. One opened for writing stops stores at once; the caller must
    /// still answer the open inside a [`PageFill::section`], which waits for those in flight.
    pub fn opened(&self, ino: u64, writes: bool) {
        let mut files = self.shared.files.lock().unwrap();
        let file = self.shared.entry(&mut files, ino);
        file.handles += 1;
        file.writers += u32::from(writes);
    }

    /// A handle was released. The end of a write handle moves the epoch on: a window read
    /// while it was open may predate its last writes.
    pub fn released(&self, ino: u64, writes: bool) {
        let mut files = self.shared.files.lock().unwrap();
        let Some(file) = files.get_mut(&ino) else { return };
        file.handles = file.handles.saturating_sub(1);
        if writes {
            file.writers = file.writers.saturating_sub(1);
            file.epoch = self.shared.next_epoch();
        }
        Shared::drop_if_idle(&mut files, ino);
    }

    /// The epoch to read a window under, if a store of it could be made now (`None` while the
    /// file is open for writing or in a section: read no more than asked for).
    pub fn epoch_to_read(&self, ino: u64) -> Option<u64> {
        let files = self.shared.files.lock().unwrap();
        files.get(&ino).filter(|f| f.writers == 0 && f.sections == 0).map(|f| f.epoch)
    }

    /// Stores a window read under `epoch`, once the read has been answered: on this worker if
    /// few others are storing, else from the store thread (or not at all if it is far behind).
    pub fn offer(&self, ino: u64, epoch: u64, window: Window) {
        let job = Job { ino, epoch, window };
        let permits = &self.shared.inline_stores;
        if permits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            self.shared.store(job);
            permits.fetch_add(1, Ordering::AcqRel);
        } else if let Err(TrySendError::Full(_)) = self.queue.try_send(job) {
            self.shared.metrics.dropped.inc();
        }
    }

    /// Runs `answer` (which answers the kernel about a change to `ino` that stores must not
    /// cross) once no store is in flight for the file, with none starting until it is done.
    /// Runs it at once when none is in flight, else on a thread of its own.
    pub fn section(&self, ino: u64, answer: impl FnOnce() + Send + 'static) {
        let busy = {
            let mut files = self.shared.files.lock().unwrap();
            let epoch = self.shared.next_epoch();
            let file = self.shared.entry(&mut files, ino);
            file.sections += 1;
            file.epoch = epoch;
            file.stores_in_flight > 0
        };
        let shared = self.shared.clone();
        let finish = move || {
            shared.wait_drained(ino);
            answer();
            shared.end_section(ino);
        };
        if busy {
            std::thread::spawn(finish);
        } else {
            finish();
        }
    }
}

impl Shared {
    fn next_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    fn entry<'a>(&self, files: &'a mut HashMap<u64, FileFill>, ino: u64) -> &'a mut FileFill {
        files.entry(ino).or_insert_with(|| FileFill {
            handles: 0,
            writers: 0,
            sections: 0,
            stores_in_flight: 0,
            epoch: self.next_epoch(),
        })
    }

    fn drop_if_idle(files: &mut HashMap<u64, FileFill>, ino: u64) {
        if files
            .get(&ino)
            // (A write handle is a handle: without handles there are no writers.)
            .is_some_and(|f| f.handles == 0 && f.sections == 0 && f.stores_in_flight == 0)
        {
            files.remove(&ino);
        }
    }

    fn wait_drained(&self, ino: u64) {
        let files = self.files.lock().unwrap();
        let _files = self
            .drained
            .wait_while(files, |files| files.get(&ino).is_some_and(|f| f.stores_in_flight > 0))
            .unwrap();
    }

    fn end_section(&self, ino: u64) {
        let mut files = self.files.lock().unwrap();
        let epoch = self.next_epoch();
        if let Some(file) = files.get_mut(&ino) {
            file.sections -= 1;
            file.epoch = epoch;
        }
        Self::drop_if_idle(&mut files, ino);
    }

    /// The store thread: stores each window whose file has not changed since it was read.
    fn store_all(&self, jobs: Receiver<Job>) {
        for job in jobs {
            self.store(job);
        }
    }

    /// Stores a window unless its file changed since it was read, or is open for writing.
    fn store(&self, Job { ino, epoch, window }: Job) {
        {
            let mut files = self.files.lock().unwrap();
            match files.get_mut(&ino) {
                Some(f) if f.writers == 0 && f.sections == 0 && f.epoch == epoch => f.stores_in_flight += 1,
                _ => {
                    self.metrics.stale.inc();
                    return;
                }
            }
        }
        // The kernel takes a store past its idea of the end of the file as growing it: the
        // window ends at the end of the file as the read found it.
        match self.sink.store(ino, window.offset, &window.data.contiguous()) {
            Ok(()) => {
                self.metrics.stored.inc();
            }
            Err(e) => debug!(ino, "page-fill store refused: {e}"),
        }
        let mut files = self.files.lock().unwrap();
        if let Some(file) = files.get_mut(&ino) {
            file.stores_in_flight -= 1;
            if file.stores_in_flight == 0 {
                self.drained.notify_all();
            }
        }
        Self::drop_if_idle(&mut files, ino);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use elasticfs_core::ReadData;

    use super::*;

    /// Records stores; a store of the file held waits until let go.
    #[derive(Default)]
    struct Gate {
        stored: Mutex<Vec<(u64, u64)>>,
        stored_signal: Condvar,
        held: Mutex<Option<u64>>,
        let_go: Condvar,
        returned: Mutex<Vec<u64>>,
    }

    /// A file only ever read, whose stores show that the thread got past what was offered before.
    const MARK: u64 = 1000;
    const PATIENCE: Duration = Duration::from_secs(60);

    impl PageSink for Gate {
        fn store(&self, ino: u64, offset: u64, _data: &[u8]) -> std::io::Result<()> {
            self.stored.lock().unwrap().push((ino, offset));
            self.stored_signal.notify_all();
            let held = self.held.lock().unwrap();
            drop(self.let_go.wait_while(held, |held| *held == Some(ino)).unwrap());
            self.returned.lock().unwrap().push(ino);
            Ok(())
        }
    }

    impl Gate {
        fn stored(&self, ino: u64) -> bool {
            self.stored.lock().unwrap().iter().any(|(i, _)| *i == ino)
        }

        fn wait_stored(&self, ino: u64, offset: u64) {
            let stored = self.stored.lock().unwrap();
            let (_stored, waited) = self
                .stored_signal
                .wait_timeout_while(stored, PATIENCE, |s| !s.contains(&(ino, offset)))
                .unwrap();
            assert!(!waited.timed_out(), "the store of {ino} at {offset} never came");
        }

        fn hold(&self, ino: u64) {
            *self.held.lock().unwrap() = Some(ino);
        }

        fn let_go(&self) {
            *self.held.lock().unwrap() = None;
            self.let_go.notify_all();
        }
    }

    fn setup() -> (PageFill, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        // No worker stores itself: every store goes through the thread the gate can hold.
        let fill = PageFill::new(gate.clone(), PageFillMetrics::default(), 0);
        fill.opened(MARK, false);
        (fill, gate)
    }

    fn window(offset: u64) -> Window {
        Window { offset, data: ReadData::default() }
    }

    /// Offers a window of `ino` at `offset` read now, and waits until the store thread stores it.
    fn store_now(fill: &PageFill, gate: &Gate, ino: u64, offset: u64) {
        fill.offer(ino, fill.epoch_to_read(ino).unwrap(), window(offset));
        gate.wait_stored(ino, offset);
    }

    /// Waits until every window offered before has been stored or dropped.
    fn settle(fill: &PageFill, gate: &Gate, n: u64) {
        store_now(fill, gate, MARK, n);
    }

    #[test]
    fn a_window_of_a_file_only_read_is_stored() {
        let (fill, gate) = setup();
        fill.opened(1, false);
        store_now(&fill, &gate, 1, 65536);
        fill.released(1, false);
        fill.released(MARK, false);
        // The store thread lets go of the last one once its store returns.
        let deadline = std::time::Instant::now() + PATIENCE;
        while !fill.shared.files.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "a file no longer open is forgotten");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_worker_stores_its_window_itself_while_others_are_free() {
        let gate = Arc::new(Gate::default());
        let fill = PageFill::new(gate.clone(), PageFillMetrics::default(), 2);
        fill.opened(1, false);
        fill.offer(1, fill.epoch_to_read(1).unwrap(), window(0));
        assert!(gate.stored(1), "stored before offer returned");
    }

    #[test]
    fn nothing_is_stored_while_a_writer_is_open() {
        let (fill, gate) = setup();
        fill.opened(1, false);
        let epoch = fill.epoch_to_read(1).unwrap();
        fill.opened(1, true);
        assert_eq!(fill.epoch_to_read(1), None, "no window is read with a writer open");
        fill.offer(1, epoch, window(0));
        settle(&fill, &gate, 1);
        assert!(!gate.stored(1));
    }

    #[test]
    fn a_window_read_before_a_writer_came_and_went_is_not_stored() {
        let (fill, gate) = setup();
        // The store thread is held in a store of another file ...
        gate.hold(2);
        fill.opened(2, false);
        store_now(&fill, &gate, 2, 0);
        // ... while a window of file 1 waits behind it, and a writer opens, writes and closes.
        fill.opened(1, false);
        let epoch = fill.epoch_to_read(1).unwrap();
        fill.offer(1, epoch, window(0));
        fill.opened(1, true);
        fill.section(1, || {});
        fill.released(1, true);
        assert!(fill.epoch_to_read(1).is_some_and(|now| now != epoch));
        gate.let_go();
        settle(&fill, &gate, 1);
        assert!(!gate.stored(1), "the window predates the writes");
    }

    #[test]
    fn a_section_waits_for_its_files_store_in_flight_but_not_on_its_caller() {
        let (fill, gate) = setup();
        fill.opened(1, false);
        let (answered, answers) = mpsc::channel();
        // Each answer tells whether the store of file 1 had returned by then.
        let answer = || {
            let (answered, gate) = (answered.clone(), gate.clone());
            move || answered.send(gate.returned.lock().unwrap().contains(&1)).unwrap()
        };
        fill.section(1, answer());
        assert_eq!(answers.try_recv(), Ok(false), "with nothing in flight, at once");

        gate.hold(1);
        store_now(&fill, &gate, 1, 0);
        fill.section(1, answer());
        // (Waiting a while gives a section that does not wait the time to answer wrongly.)
        let early = answers.recv_timeout(Duration::from_millis(200));
        assert!(early.is_err(), "not while the store is in flight, nor on its caller");
        assert_eq!(fill.epoch_to_read(1), None, "no window is read during a section");
        gate.let_go();
        assert_eq!(answers.recv_timeout(PATIENCE), Ok(true), "only once the store returned");
    }
}
