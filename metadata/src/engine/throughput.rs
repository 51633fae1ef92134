//! The throughput governor (see [`crate::throughput`]) as a record in the store: every lease,
//! from any client of any process, is a transaction on it, so the file system has one token
//! bucket and one credit balance however many clients share it, and a setting changed with
//! `config` applies from the next lease on. Its clock is the wall clock.

use super::sessions::{decode, encode};
use super::txn::Txn;
use super::Engine;
use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter};
use crate::kv::{Kv, TxResult};
use crate::throughput::{Governor, Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::{Superblock, Timestamp};

fn unix_now() -> f64 {
    let t = Timestamp::now();
    t.secs as f64 + t.nanos as f64 / 1e9
}

impl Txn<'_> {
    pub(super) fn superblock(&mut self) -> TxResult<Superblock> {
        let raw = self
            .get(keys::SUPERBLOCK)?
            .ok_or_else(|| MetaError::Format("the superblock is missing".into()))?;
        Ok(serde_json::from_slice(&raw)
            .map_err(|e| MetaError::Format(format!("the superblock is unreadable: {e}")))?)
    }

    /// The governor brought up to `now`: the current settings and bytes stored applied.
    fn governor(&mut self, now: f64) -> TxResult<Governor> {
        let settings = self.superblock()?.throughput;
        let stored = self.counter_total(Counter::Bytes)?;
        let mut governor = match self.get(keys::GOVERNOR)? {
            Some(raw) => decode::<Governor>(&raw)?,
            None => Governor::new(settings, stored, None, now),
        };
        if *governor.settings() != settings {
            governor.set_settings(settings, now);
        }
        governor.set_stored(stored, now);
        Ok(governor)
    }

    fn put_governor(&mut self, governor: &Governor) -> TxResult<()> {
        self.put(keys::GOVERNOR, &encode(governor)?);
        Ok(())
    }
}

impl<K: Kv> Engine<K> {
    /// A lease is not waited on to be durable: a crash loses a moment of metering at most.
    pub(super) fn lease_throughput_in(&self, request: &LeaseRequest) -> MetaResult<Lease> {
        let now = unix_now();
        self.run(|t| {
            let mut governor = t.governor(now)?;
            let lease = governor.lease(request, now);
            t.put_governor(&governor)?;
            Ok(lease)
        })
    }

    pub(super) fn throughput_in(&self) -> MetaResult<ThroughputStatus> {
        let now = unix_now();
        self.read(|t| Ok(t.governor(now)?.status(now)))
    }

    /// Stores the new settings in the superblock, durably; every client's next lease uses
    /// them. Only the throughput settings of a superblock ever change.
    pub(super) fn set_throughput_in(&self, settings: &ThroughputSettings) -> MetaResult<()> {
        let now = unix_now();
        self.mutate(|t| {
            let mut superblock = t.superblock()?;
            superblock.throughput = *settings;
            t.put(keys::SUPERBLOCK, &serde_json::to_vec(&superblock).map_err(MetaError::store)?);
            let governor = t.governor(now)?;
            t.put_governor(&governor)
        })
    }
}
