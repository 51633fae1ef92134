//! Client sessions: every mount (and gateway) of a file system is one session. Locks and
//! files unlinked while open belong to a session, and go when it ends or stops heartbeating.

use serde::{Deserialize, Serialize};

use crate::types::Timestamp;

/// A session's number, never reused by one store.
pub type SessionId = u64;

/// Who a client is, as it says when it connects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub host: String,
    /// Where it is mounted (or what it serves).
    pub mountpoint: String,
    /// The client's elasticfs version.
    pub version: String,
    pub pid: u32,
}

impl ClientInfo {
    /// This process, serving `mountpoint`.
    pub fn this_process(mountpoint: &str) -> Self {
        ClientInfo {
            host: hostname(),
            mountpoint: mountpoint.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A live session, as `elasticfs status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub client: ClientInfo,
    pub started: Timestamp,
    /// The client's last sign of life.
    pub heartbeat: Timestamp,
    /// Without a heartbeat for this long the session has expired and whoever sees it first
    /// ends it; 0 for a session whose client the store's own process watches (an embedded
    /// mount, a client of the metadata service).
    pub lease_ms: u64,
}

impl SessionRecord {
    /// Whether the session missed its lease, as of `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.lease_ms > 0 && now.millis_since(self.heartbeat) > self.lease_ms as i64
    }
}
