//! Commits whose answer was lost. When the member a commit went to dies, or the connection
//! drops, the commit may or may not have been applied; sending it again would either fail its
//! compares against its own writes (and the engine would rerun the operation on a state that
//! already holds it: a create answered EEXIST, a rename ENOENT) or, for a commit that read
//! nothing, apply twice. So every commit also creates a *receipt*: a key of its own, under
//! this client's id, that the commit requires to be absent (applied at most once) and leaves
//! behind. After a lost answer the commit is sent again until the cluster answers; if it then
//! fails, the receipt says whether the first one had been applied. Receipts live under an etcd
//! lease, so they expire by themselves a few minutes later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{EtcdKv, Patience};
use crate::kv::{TxError, TxResult};

/// How long a receipt outlives its commit.
const RECEIPT_TTL_SECS: i64 = 300;
/// A new lease is taken this often, so that every receipt lives at least
/// `RECEIPT_TTL_SECS - RENEW_EVERY` (a lease is not kept alive).
const RENEW_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Receipts {
    /// This client's id: receipts are `NAME/z/<client>/<sequence>`.
    client: u64,
    next: AtomicU64,
    lease: Mutex<Option<(i64, Instant)>>,
}

impl Receipts {
    pub(super) fn new() -> Self {
        let client = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes"));
        Receipts { client, next: AtomicU64::new(0), lease: Mutex::new(None) }
    }
}

impl EtcdKv {
    fn receipt_lease(&self) -> TxResult<i64> {
        let mut lease = self.receipts.lease.lock().unwrap();
        if let Some((id, granted)) = *lease {
            if granted.elapsed() < RENEW_EVERY {
                return Ok(id);
            }
        }
        let mut wait = Patience::new(self);
        let id = loop {
            let mut client = self.client.clone();
            match self.block_on(async move { client.lease_grant(RECEIPT_TTL_SECS, None).await }) {
                Ok(granted) => break granted.id(),
                Err(e) => wait.after(&e)?,
            }
        };
        *lease = Some((id, Instant::now()));
        Ok(id)
    }

    fn forget_lease(&self) {
        *self.receipts.lease.lock().unwrap() = None;
    }

    /// Commits `ops` if `compares` hold: Ok once applied, with the revision it made when the
    /// answer said so (not when only a receipt did), [`TxError::Conflict`] if the compares
    /// failed, whatever happened to the answers on the way.
    pub(super) fn commit(&self, mut compares: Vec<Compare>, mut ops: Vec<TxnOp>) -> TxResult<Option<i64>> {
        let sequence = self.receipts.next.fetch_add(1, Ordering::Relaxed);
        let receipt = self.key(format!("z/{:016x}/{sequence:016x}", self.receipts.client).as_bytes());
        let lease = self.receipt_lease()?;
        compares.push(Compare::version(receipt.clone(), CompareOp::Equal, 0));
        ops.push(TxnOp::put(receipt.clone(), Vec::new(), Some(PutOptions::new().with_lease(lease))));
        tracing::trace!(compares = compares.len(), writes = ops.len(), "etcd commit");
        let txn = Txn::new().when(compares).and_then(ops);
        let mut wait = Patience::new(self);
        let mut answer_lost = false;
        loop {
            match self.send(txn.clone()) {
                Ok(response) if response.succeeded() => return Ok(response.header().map(|h| h.revision())),
                Ok(_) if answer_lost && self.receipt_exists(&receipt)? => return Ok(None),
                Ok(_) => return Err(TxError::Conflict),
                Err(e) if e.to_string().contains("lease not found") => {
                    // Not applied (the request names a lease that expired): take a new one.
                    self.forget_lease();
                    if answer_lost && self.receipt_exists(&receipt)? {
                        return Ok(None);
                    }
                    return Err(TxError::Conflict);
                }
                Err(e) => {
                    answer_lost = true;
                    wait.after(&e)?;
                }
            }
        }
    }

    fn receipt_exists(&self, receipt: &[u8]) -> TxResult<bool> {
        let get = TxnOp::get(receipt.to_vec(), None);
        let response = self.read_txn(Txn::new().and_then(vec![get]))?;
        Ok(response
            .op_responses()
            .iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Get(g) if !g.kvs().is_empty())))
    }
}
