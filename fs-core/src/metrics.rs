//! Prometheus metrics. [`EngineMetrics`] counts what this client does (operations and their
//! latency, bytes, cache hits, object-store requests); [`FileSystemFigures`] reads the file
//! system's own figures (EFS's CloudWatch metrics) from the metadata store at each scrape.
//! Frontends register both in a [`Registry`] and serve it (see `elasticfs --metrics`).

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use elasticfs_metadata::throughput::ThroughputStatus;
use elasticfs_metadata::{MetaResult, MetaStore, Usage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// An engine operation, as counted and timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Getattr,
    Lookup,
    Mknod,
    Symlink,
    Readlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Readdir,
    Setattr,
    Statfs,
    SetXattr,
    GetXattr,
    ListXattr,
    RemoveXattr,
    Open,
    Flush,
    Release,
    Read,
    Write,
    Fallocate,
    SetLock,
    TestLock,
}

impl Op {
    const ALL: [Op; 24] = [
        Op::Getattr,
        Op::Lookup,
        Op::Mknod,
        Op::Symlink,
        Op::Readlink,
        Op::Link,
        Op::Unlink,
        Op::Rmdir,
        Op::Rename,
        Op::Readdir,
        Op::Setattr,
        Op::Statfs,
        Op::SetXattr,
        Op::GetXattr,
        Op::ListXattr,
        Op::RemoveXattr,
        Op::Open,
        Op::Flush,
        Op::Release,
        Op::Read,
        Op::Write,
        Op::Fallocate,
        Op::SetLock,
        Op::TestLock,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Getattr => "getattr",
            Op::Lookup => "lookup",
            Op::Mknod => "mknod",
            Op::Symlink => "symlink",
            Op::Readlink => "readlink",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Readdir => "readdir",
            Op::Setattr => "setattr",
            Op::Statfs => "statfs",
            Op::SetXattr => "setxattr",
            Op::GetXattr => "getxattr",
            Op::ListXattr => "listxattr",
            Op::RemoveXattr => "removexattr",
            Op::Open => "open",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Read => "read",
            Op::Write => "write",
            Op::Fallocate => "fallocate",
            Op::SetLock => "setlk",
            Op::TestLock => "getlk",
        }
    }
}

/// A request to the object store, as counted (a client only reads, writes and checks
/// objects; deleting and listing are garbage collection's, which runs outside any client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectRequest {
    Get,
    Put,
    Head,
}

// The series are kept in `ALL` order and found by discriminant: the two must agree.
const _: () = {
    let mut i = 0;
    while i < Op::ALL.len() {
        assert!(Op::ALL[i] as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < ObjectRequest::ALL.len() {
        assert!(ObjectRequest::ALL[i] as usize == i);
        i += 1;
    }
};

impl ObjectRequest {
    const ALL: [ObjectRequest; 3] = [ObjectRequest::Get, ObjectRequest::Put, ObjectRequest::Head];

    fn name(self) -> &'static str {
        match self {
            ObjectRequest::Get => "get",
            ObjectRequest::Put => "put",
            ObjectRequest::Head => "head",
        }
    }
}

/// Which cache a lookup went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheTier {
    Memory,
    Disk,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

type SecondsCounter = Counter<f64, AtomicU64>;

/// What this client does. Cheap to update: each series is created once, up front, so that a
/// hot path only bumps atomics (a histogram takes a short lock).
#[derive(Debug)]
pub struct EngineMetrics {
    operation_seconds: Family<OpLabel, Histogram>,
    operation_errors: Family<OpLabel, Counter>,
    op_seconds: Vec<Histogram>,
    op_errors: Vec<Counter>,
    /// Every operation, for [`EngineMetrics::totals`] (Prometheus gets the histograms'
    /// `_count`, which the crate does not let us read).
    operations: Counter,
    read_bytes: Counter,
    written_bytes: Counter,
    cache_hits: Family<CacheLabel, Counter>,
    cache_misses: Family<CacheLabel, Counter>,
    /// Hits and misses of the memory and the disk cache.
    tiers: [(Counter, Counter); 2],
    object_requests: Family<RequestLabel, Counter>,
    object_errors: Family<RequestLabel, Counter>,
    requests: Vec<(Counter, Counter)>,
    throttled_seconds: SecondsCounter,
    /// Bytes of the write-back buffer in use (the engine's `WriteBudget` counts in it).
    write_buffer: Gauge,
    /// Bytes flushes uploaded as slices, and bytes compactions uploaded.
    slice_bytes: Counter,
    compaction_bytes: Counter,
    compactions: Family<OutcomeLabel, Counter>,
    /// Compactions committed, and those that gave up (the block changed meanwhile).
    outcomes: [Counter; 2],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        // 50 µs to about 100 s: a cached getattr to a throttled 64 MiB write.
        let operation_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(50e-6, 4.0, 11))
        });
        let operation_errors = Family::<OpLabel, Counter>::default();
        let op_seconds =
            Op::ALL.iter().map(|op| operation_seconds.get_or_create_owned(&OpLabel { op: op.name() }));
        let op_errors =
            Op::ALL.iter().map(|op| operation_errors.get_or_create_owned(&OpLabel { op: op.name() }));
        let (cache_hits, cache_misses) = (Family::default(), Family::default());
        let tier = |cache| {
            let label = CacheLabel { cache };
            (cache_hits.get_or_create_owned(&label), cache_misses.get_or_create_owned(&label))
        };
        let tiers = [tier("memory"), tier("disk")];
        let (object_requests, object_errors) = (Family::default(), Family::default());
        let requests = ObjectRequest::ALL
            .iter()
            .map(|r| {
                let label = RequestLabel { request: r.name() };
                (object_requests.get_or_create_owned(&label), object_errors.get_or_create_owned(&label))
            })
            .collect();
        let compactions = Family::<OutcomeLabel, Counter>::default();
        let outcomes = ["applied", "abandoned"]
            .map(|outcome| compactions.get_or_create_owned(&OutcomeLabel { outcome }));
        EngineMetrics {
            slice_bytes: Counter::default(),
            compaction_bytes: Counter::default(),
            compactions,
            outcomes,
            op_seconds: op_seconds.collect(),
            op_errors: op_errors.collect(),
            operations: Counter::default(),
            operation_seconds,
            operation_errors,
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            cache_hits,
            cache_misses,
            tiers,
            object_requests,
            object_errors,
            requests,
            throttled_seconds: SecondsCounter::default(),
            write_buffer: Gauge::default(),
        }
    }
}

impl EngineMetrics {
    /// Adds this client's series to `registry` (under its prefix, e.g. `elasticfs_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "client_operation_seconds",
            "Engine operations of this client and how long they took, throttling included \
             (a create counts as mknod + open, a directory listing as getattr + readdir)",
            self.operation_seconds.clone(),
        );
        registry.register(
            "client_operation_errors",
            "Engine operations of this client that returned an error (ENOENT included)",
            self.operation_errors.clone(),
        );
        registry.register("client_read_bytes", "File data this client read", self.read_bytes.clone());
        registry.register("client_written_bytes", "File data this client wrote", self.written_bytes.clone());
        registry.register(
            "cache_hits",
            "Chunk lookups this client's cache answered",
            self.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Chunk lookups this client's cache could not answer",
            self.cache_misses.clone(),
        );
        registry.register(
            "object_store_requests",
            "Requests this client made to the object store",
            self.object_requests.clone(),
        );
        registry.register(
            "object_store_errors",
            "Requests to the object store that failed (a HEAD of a missing object is no error)",
            self.object_errors.clone(),
        );
        registry.register(
            "client_throttled_seconds",
            "Time this client's requests waited for the file system's permitted throughput",
            self.throttled_seconds.clone(),
        );
        registry.register(
            "client_slice_bytes",
            "File data this client's flushes uploaded as slices over blocks (writes in place)",
            self.slice_bytes.clone(),
        );
        registry.register(
            "client_compaction_bytes",
            "Bytes this client's compactions of blocks' slices uploaded",
            self.compaction_bytes.clone(),
        );
        registry.register(
            "client_compactions",
            "Compactions of blocks' slices this client ran: applied, or abandoned because the \
             block changed meanwhile",
            self.compactions.clone(),
        );
        registry.register(
            "client_write_buffer_bytes",
            "Written data this client holds in memory, not yet uploaded (its write-back buffer)",
            self.write_buffer.clone(),
        );
    }

    /// A flush uploaded `bytes` as slices (a chunk the store had already is not counted).
    pub(crate) fn sliced(&self, bytes: u64) {
        self.slice_bytes.inc_by(bytes);
    }

    /// A compaction uploaded `bytes` (none if the store had its chunk), and was committed or
    /// gave up.
    pub(crate) fn compacted(&self, bytes: u64, applied: bool) {
        self.compaction_bytes.inc_by(bytes);
        self.outcomes[usize::from(!applied)].inc();
    }

    /// The gauge the write-back buffer counts its bytes in.
    pub(crate) fn write_buffer(&self) -> Gauge {
        self.write_buffer.clone()
    }

    pub fn operation(&self, op: Op, took: Duration, failed: bool) {
        let index = op as usize;
        self.op_seconds[index].observe(took.as_secs_f64());
        self.operations.inc();
        if failed {
            self.op_errors[index].inc();
        }
    }

    pub fn read(&self, bytes: u64) {
        self.read_bytes.inc_by(bytes);
    }

    pub fn written(&self, bytes: u64) {
        self.written_bytes.inc_by(bytes);
    }

    pub fn cache_lookup(&self, tier: CacheTier, hit: bool) {
        let (hits, misses) = &self.tiers[tier as usize];
        if hit { hits } else { misses }.inc();
    }

    pub fn object_request(&self, request: ObjectRequest, failed: bool) {
        let (requests, errors) = &self.requests[request as usize];
        requests.inc();
        if failed {
            errors.inc();
        }
    }

    pub fn throttled(&self, waited: Duration) {
        self.throttled_seconds.inc_by(waited.as_secs_f64());
    }

    /// This client's totals so far, summed over the labels (for `elasticfs status`).
    pub fn totals(&self) -> ClientTotals {
        let (memory, disk) = (&self.tiers[CacheTier::Memory as usize], &self.tiers[CacheTier::Disk as usize]);
        ClientTotals {
            operations: self.operations.get(),
            operation_errors: self.op_errors.iter().map(Counter::get).sum(),
            read_bytes: self.read_bytes.get(),
            written_bytes: self.written_bytes.get(),
            memory_cache: (memory.0.get(), memory.1.get()),
            disk_cache: (disk.0.get(), disk.1.get()),
            object_requests: self.requests.iter().map(|(requests, _)| requests.get()).sum(),
            object_errors: self.requests.iter().map(|(_, errors)| errors.get()).sum(),
            throttled_seconds: self.throttled_seconds.get(),
            slice_bytes: self.slice_bytes.get(),
            compaction_bytes: self.compaction_bytes.get(),
            compactions: self.outcomes[0].get(),
        }
    }
}

/// See [`EngineMetrics::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientTotals {
    pub operations: u64,
    pub operation_errors: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Hits and misses.
    pub memory_cache: (u64, u64),
    pub disk_cache: (u64, u64),
    pub object_requests: u64,
    pub object_errors: u64,
    pub throttled_seconds: f64,
    pub slice_bytes: u64,
    pub compaction_bytes: u64,
    /// Compactions committed.
    pub compactions: u64,
}

/// Where [`FileSystemFigures`] reads: the metadata store, once there is a file system in it.
pub type FiguresSource = Box<dyn Fn() -> Option<Arc<dyn MetaStore>> + Send + Sync>;

/// The file system's figures, as EFS publishes them to CloudWatch, read from the metadata
/// store at each scrape: the same numbers on every client and on the metadata service.
pub struct FileSystemFigures {
    source: FiguresSource,
}

impl FileSystemFigures {
    pub fn new(source: FiguresSource) -> Self {
        FileSystemFigures { source }
    }

    /// The figures of the file system a client has open.
    pub fn of(meta: Arc<dyn MetaStore>) -> Self {
        Self::new(Box::new(move || Some(meta.clone())))
    }
}

impl fmt::Debug for FileSystemFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSystemFigures").finish_non_exhaustive()
    }
}

impl Collector for FileSystemFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let figures = (self.source)().and_then(|meta| read_figures(meta.as_ref()).ok());
        let up = u64::from(figures.is_some());
        let up_help =
            "1 if this scrape read the file system's figures (the metadata store answered and holds a file system).";
        gauge(&mut encoder, "file_system_up", up_help, up)?;
        let Some((t, usage, sessions)) = figures else { return Ok(()) };
        let gauges = [
            (
                "burst_credit_balance_bytes",
                "BurstCreditBalance: burst credits left (bursting mode).",
                t.burst_credit_balance,
            ),
            (
                "permitted_throughput_bytes_per_second",
                "PermittedThroughput: the metered throughput the file system may use now.",
                t.permitted_throughput,
            ),
            ("client_connections", "ClientConnections: live client sessions.", sessions as u64),
            (
                "storage_bytes",
                "StorageBytes: bytes stored, as the governor last measured them.",
                t.stored_bytes,
            ),
            ("used_inodes", "Inodes in use.", usage.inodes),
        ];
        for (name, help, value) in gauges {
            gauge(&mut encoder, name, help, value)?;
        }
        let counters = [
            ("metered_io_bytes", "MeteredIOBytes: I/O as the governor meters it.", t.io.metered),
            ("io_bytes", "TotalIOBytes: data read and written plus metadata I/O.", t.io.total()),
            ("data_read_io_bytes", "DataReadIOBytes: file data read.", t.io.data_read),
            ("data_write_io_bytes", "DataWriteIOBytes: file data written.", t.io.data_write),
            ("metadata_io_bytes", "MetadataIOBytes: metadata requests, metered.", t.io.metadata),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

fn read_figures(meta: &dyn MetaStore) -> MetaResult<(ThroughputStatus, Usage, usize)> {
    Ok((meta.throughput()?, meta.usage()?, meta.sessions()?.len()))
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn operations_and_requests_land_in_their_series() {
        let metrics = EngineMetrics::default();
        let mut registry = Registry::with_prefix("elasticfs");
        metrics.register(&mut registry);
        metrics.operation(Op::Write, Duration::from_millis(3), false);
        metrics.operation(Op::Lookup, Duration::from_micros(10), true);
        metrics.written(4096);
        metrics.cache_lookup(CacheTier::Disk, true);
        metrics.object_request(ObjectRequest::Put, true);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"elasticfs_client_operation_seconds_count{op="write"} 1"#,
            r#"elasticfs_client_operation_seconds_count{op="read"} 0"#,
            r#"elasticfs_client_operation_errors_total{op="lookup"} 1"#,
            r#"elasticfs_client_operation_errors_total{op="write"} 0"#,
            "elasticfs_client_written_bytes_total 4096",
            r#"elasticfs_cache_hits_total{cache="disk"} 1"#,
            r#"elasticfs_cache_hits_total{cache="memory"} 0"#,
            r#"elasticfs_object_store_requests_total{request="put"} 1"#,
            r#"elasticfs_object_store_errors_total{request="put"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
