//! The throughput governor of an open store (see [`crate::throughput`]): one per store, shared
//! by every session. Its credit balance is saved beside the usage counters, so that restarting
//! the store neither refills the balance nor forgets it.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{read_counter, write_superblock, SledStore};
use crate::error::MetaResult;
use crate::schema;
use crate::throughput::{Governor, Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::Superblock;

/// Counter keys: the balance (f64 bits) and the Unix time it was saved (f64 bits).
const CREDITS: &[u8] = b"burst_credits";
const CREDITS_SAVED_AT: &[u8] = b"burst_credits_at";
/// Seconds between measurements of the bytes stored.
const MEASURE_EVERY: f64 = 1.0;
/// Seconds between saves of the balance (a crash loses at most this much of its history).
const SAVE_EVERY: f64 = 10.0;

pub(super) struct Throughput {
    state: Mutex<State>,
    /// The governor's clock: seconds since the store was opened.
    started: Instant,
    counters: sled::Tree,
}

struct State {
    governor: Governor,
    measured_at: f64,
    saved_at: f64,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn read_f64(tree: &sled::Tree, key: &[u8]) -> MetaResult<Option<f64>> {
    Ok(tree.get(key)?.map(|v| f64::from_bits(schema::decode_u64(&v))))
}

impl Throughput {
    pub(super) fn open(counters: &sled::Tree, settings: ThroughputSettings) -> MetaResult<Self> {
        let stored = read_counter(counters, schema::BYTES_COUNTER)?;
        // Credits are earned while the store is closed too: nobody used it meanwhile.
        let credits = match (read_f64(counters, CREDITS)?, read_f64(counters, CREDITS_SAVED_AT)?) {
            (Some(balance), Some(at)) => {
                Some(balance + settings.baseline(stored) * (unix_now() - at).max(0.0))
            }
            _ => None,
        };
        let governor = Governor::new(settings, stored, credits, 0.0);
        Ok(Throughput {
            state: Mutex::new(State { governor, measured_at: 0.0, saved_at: 0.0 }),
            started: Instant::now(),
            counters: counters.clone(),
        })
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Runs `f` on the governor brought up to date: the stored size re-measured and the
    /// balance saved when they are due.
    fn with<T>(&self, f: impl FnOnce(&mut Governor, f64) -> T) -> MetaResult<T> {
        let now = self.now();
        let mut state = self.state.lock().unwrap();
        if now - state.measured_at >= MEASURE_EVERY {
            let stored = read_counter(&self.counters, schema::BYTES_COUNTER)?;
            state.governor.set_stored(stored, now);
            state.measured_at = now;
        }
        let value = f(&mut state.governor, now);
        if now - state.saved_at >= SAVE_EVERY {
            self.save(&state.governor)?;
            state.saved_at = now;
        }
        Ok(value)
    }

    /// Writes the balance without waiting for it to be durable: the next durable commit of any
    /// change carries it.
    fn save(&self, governor: &Governor) -> MetaResult<()> {
        self.counters.insert(CREDITS, &schema::encode_u64(governor.credits().to_bits()))?;
        self.counters.insert(CREDITS_SAVED_AT, &schema::encode_u64(unix_now().to_bits()))?;
        Ok(())
    }
}

impl Drop for Throughput {
    fn drop(&mut self) {
        let state = self.state.lock().unwrap();
        if let Err(e) = self.save(&state.governor) {
            tracing::warn!("saving the burst credit balance: {e}");
        }
    }
}

impl SledStore {
    pub(super) fn lease_throughput_in(&self, request: &LeaseRequest) -> MetaResult<Lease> {
        self.shared.throughput.with(|g, now| g.lease(request, now))
    }

    pub(super) fn throughput_in(&self) -> MetaResult<ThroughputStatus> {
        self.shared.throughput.with(|g, now| g.status(now))
    }

    /// Stores the new settings in the superblock, durably, then applies them. Only the
    /// throughput settings of a superblock ever change.
    pub(super) fn set_throughput_in(&self, settings: &ThroughputSettings) -> MetaResult<()> {
        let superblock = Superblock { throughput: *settings, ..self.shared.superblock.clone() };
        write_superblock(&self.shared.db, &superblock)?;
        self.shared.durable.wait_durable()?;
        self.shared.throughput.with(|g, now| g.set_settings(*settings, now))
    }
}
