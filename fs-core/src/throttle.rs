//! This client's side of the throughput governor (see [`elasticfs_metadata::throughput`]):
//! every read, write and metadata request is metered as EFS meters it and paid for from tokens
//! leased in batches from the metadata store, waiting when the file system's permitted
//! throughput is used up. The I/O done is reported with the next lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticfs_metadata::throughput::{IoKind, IoReport, Lease, LeaseRequest, ThroughputSettings};
use elasticfs_metadata::MetaStore;
use tracing::warn;

use crate::metrics::EngineMetrics;

pub struct Throttle {
    meta: Arc<dyn MetaStore>,
    metrics: Arc<EngineMetrics>,
    /// How requests are metered (the rules of the settings at mount time).
    metering: ThroughputSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Metered bytes left of the current lease.
    balance: u64,
    /// The lease's tokens (or an unlimited answer) lapse at this time.
    valid_until: Option<Instant>,
    unlimited: bool,
    /// I/O not yet reported to the governor.
    unreported: IoReport,
}

/// Longest wait between two lease requests of a throttled client, so that a change of mode
/// or a rise of the permitted rate is noticed soon.
const MAX_WAIT: Duration = Duration::from_millis(200);

impl Throttle {
    pub fn new(meta: Arc<dyn MetaStore>, metrics: Arc<EngineMetrics>) -> Self {
        let metering = meta.superblock().throughput;
        Throttle { meta, metrics, metering, state: Mutex::new(State::default()) }
    }

    /// Meters one request of `len` bytes (0 for metadata) and returns once it may proceed.
    pub fn charge(&self, kind: IoKind, len: u64) {
        let metered = self.metering.metered(kind, len);
        let report = match kind {
            IoKind::Read => IoReport { data_read: len, metered, ..Default::default() },
            IoKind::Write => IoReport { data_write: len, metered, ..Default::default() },
            IoKind::Metadata => IoReport { metadata: metered, metered, ..Default::default() },
        };
        let mut st = self.state.lock().unwrap();
        st.unreported.add(&report);
        loop {
            let now = Instant::now();
            if st.valid_until.is_some_and(|t| t <= now) {
                st.balance = 0;
                st.valid_until = None;
                st.unlimited = false;
            }
            if st.unlimited {
                return;
            }
            if st.balance >= metered {
                st.balance -= metered;
                return;
            }
            let request = LeaseRequest { need: metered - st.balance, report: st.unreported };
            match self.meta.lease_throughput(&request) {
                Ok(Lease::Granted { bytes, valid_ms }) => {
                    st.unreported = IoReport::default();
                    st.balance = (st.balance + bytes).saturating_sub(metered);
                    st.valid_until = Some(now + Duration::from_millis(valid_ms));
                    return;
                }
                Ok(Lease::Unlimited { valid_ms }) => {
                    st.unreported = IoReport::default();
                    st.unlimited = true;
                    st.valid_until = Some(now + Duration::from_millis(valid_ms));
                    return;
                }
                Ok(Lease::Wait { retry_ms }) => {
                    st.unreported = IoReport::default();
                    // Others may pay from a lease meanwhile; this caller asks again after.
                    drop(st);
                    let wait = Duration::from_millis(retry_ms).min(MAX_WAIT);
                    std::thread::sleep(wait);
                    self.metrics.throttled(wait);
                    st = self.state.lock().unwrap();
                }
                Err(e) => {
                    // Metering must not fail the I/O: whatever made the store unreachable fails
                    // the request itself if it matters.
                    warn!("throughput lease failed, going on unmetered: {e}");
                    return;
                }
            }
        }
    }

    /// Sends the I/O not yet reported (an idle client's last figures).
    pub fn report(&self) {
        let mut st = self.state.lock().unwrap();
        if st.unreported == IoReport::default() {
            return;
        }
        let request = LeaseRequest { need: 0, report: st.unreported };
        if self.meta.lease_throughput(&request).is_ok() {
            st.unreported = IoReport::default();
        }
    }
}
