//! [`EtcdKv`]: the replicated driver, on an etcd v3 cluster (`etcd-client`).
//!
//! Serializable optimistic transactions: every read of a transaction is at one revision (the
//! first read's); the commit is one etcd `Txn` whose compares check the mod-revision of every
//! key read (0 for a key that was absent, so a key created meanwhile conflicts too) and guard
//! every range read against keys written into it since that revision; a failed compare is a
//! [`TxError::Conflict`] and the engine runs the body again. One metadata operation is one
//! etcd transaction: a commit past etcd's limits (128 operations, 1.5 MiB per request by
//! default) is refused with an error naming the limit, and the engine keeps its steps within
//! [`Kv::max_ops`]. Keys live under `NAME/`, so several file systems share one cluster.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;
use tracing::{info, warn};

use super::write_set::WriteSet;
use super::{Body, Kv, KvTxn, Pair, TxError, TxResult};
use crate::error::{MetaError, MetaResult};

/// etcd's default `--max-txn-ops`: compares and operations each.
const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB), less room for the request's framing.
const MAX_REQUEST_BYTES: usize = (3 << 19) - (16 << 10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// The file system's name in the cluster: its keys start with `NAME/`.
    pub name: String,
    /// PEM of the CA that signed the members' certificates (TLS when set).
    pub tls_ca: Option<Vec<u8>>,
    /// User and password, for a cluster with authentication enabled.
    pub user: Option<(String, String)>,
    /// How long a call waits for the cluster to answer before it fails with EIO; `None`
    /// waits for ever (a hard mount).
    pub give_up_after: Option<Duration>,
}

pub struct EtcdKv {
    /// Set while the cluster does not answer, so that an outage is logged once.
    outage: std::sync::atomic::AtomicBool,
    client: Client,
    runtime: tokio::runtime::Runtime,
    prefix: Vec<u8>,
    options: EtcdOptions,
}

impl EtcdKv {
    /// Connects to the cluster and checks that it answers.
    pub fn connect(options: EtcdOptions) -> MetaResult<Self> {
        if options.endpoints.is_empty() {
            return Err(MetaError::Invalid("an etcd URL needs at least one host:port".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("elasticfs-etcd")
            .enable_all()
            .build()
            .map_err(MetaError::store)?;
        let scheme = if options.tls_ca.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = options.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        if let Some(ca) = &options.tls_ca {
            connect =
                connect.with_tls(TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)));
        }
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        let describe = describe(&options);
        let client = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), Client::connect(endpoints, Some(connect))).await
            })
            .map_err(|_| {
                MetaError::Unavailable(format!(
                    "no member of {describe} answered within 10 s: is the cluster running?"
                ))
            })?
            .map_err(|e| unavailable(&describe, &e))?;
        let kv = EtcdKv {
            outage: Default::default(),
            client,
            runtime,
            prefix: format!("{}/", options.name).into_bytes(),
            options,
        };
        // A first read, so that a wrong address or a refused login is reported now.
        let mut probe = kv.client.clone();
        let key = kv.key(b"S");
        kv.block_on(async move { probe.get(key, None).await }).map_err(|e| unavailable(&describe, &e))?;
        tracing::debug!("connected to {describe}");
        Ok(kv)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// Runs `f` on the driver's runtime and waits for it from a blocking caller.
    fn block_on<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the etcd runtime lives as long as the driver")
    }

    /// Sends one transaction, retrying while the cluster is unreachable (for ever, or until
    /// `give_up_after`).
    fn call(&self, txn: Txn) -> TxResult<etcd_client::TxnResponse> {
        use std::sync::atomic::Ordering;
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let mut client = self.client.clone();
            let request = txn.clone();
            match self.block_on(async move { client.txn(request).await }) {
                Ok(response) => {
                    if self.outage.swap(false, Ordering::Relaxed) {
                        info!("{} answers again", describe(&self.options));
                    }
                    return Ok(response);
                }
                Err(e) if is_compacted(&e) => return Err(TxError::Conflict),
                Err(e) if is_transient(&e) => {
                    if self.options.give_up_after.is_some_and(|limit| started.elapsed() >= limit) {
                        return Err(TxError::Abort(unavailable(&describe(&self.options), &e)));
                    }
                    if !self.outage.swap(true, Ordering::Relaxed) {
                        warn!("{} does not answer ({e}); retrying", describe(&self.options));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(TxError::Abort(unavailable(&describe(&self.options), &e))),
            }
        }
    }
}

fn describe(options: &EtcdOptions) -> String {
    format!("etcd://{}/{}", options.endpoints.join(","), options.name)
}

fn unavailable(describe: &str, e: &etcd_client::Error) -> MetaError {
    let hint = match e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) =>
        {
            "check the user and password (ELASTICFS_ETCD_PASSWORD or password-file=)"
        }
        _ => "check that the cluster is running and has a quorum, and the addresses in --meta",
    };
    MetaError::Unavailable(format!("{describe}: {e}; {hint}"))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string().contains("compacted")
}

/// Whether the call may succeed if sent again: the cluster unreachable, without a leader or
/// changing leaders.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let message = s.message();
            matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown)
                || message.contains("no leader")
                || message.contains("timed out")
                || message.contains("leader changed")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

impl Kv for EtcdKv {
    fn transact(&self, body: Body) -> TxResult<()> {
        let mut txn = EtcdTxn::new(self);
        body(&mut txn)?;
        txn.commit()
    }

    fn read(&self, body: Body) -> TxResult<()> {
        body(&mut EtcdTxn::new(self))
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn describe(&self) -> String {
        describe(&self.options)
    }
}

/// One transaction: the revision its reads are at, what they saw, and what it wrote.
struct EtcdTxn<'a> {
    kv: &'a EtcdKv,
    revision: Option<i64>,
    /// Every key read, with its value and mod-revision (0: absent).
    seen: HashMap<Vec<u8>, (i64, Option<Vec<u8>>)>,
    /// Every range scanned, `[start, end)` (without the prefix).
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    writes: WriteSet,
}

impl<'a> EtcdTxn<'a> {
    fn new(kv: &'a EtcdKv) -> Self {
        EtcdTxn { kv, revision: None, seen: HashMap::new(), ranges: Vec::new(), writes: WriteSet::default() }
    }

    fn at_revision(&self, options: GetOptions) -> GetOptions {
        match self.revision {
            Some(rev) => options.with_revision(rev),
            None => options,
        }
    }

    /// Sends reads as one etcd transaction (one round trip, one revision).
    fn fetch(&mut self, gets: Vec<TxnOp>) -> TxResult<Vec<etcd_client::GetResponse>> {
        let mut out = Vec::with_capacity(gets.len());
        let mut remaining = gets;
        while !remaining.is_empty() {
            let rest = remaining.split_off(remaining.len().min(MAX_TXN_OPS));
            let response = self.kv.call(Txn::new().and_then(std::mem::replace(&mut remaining, rest)))?;
            if self.revision.is_none() {
                self.revision = response.header().map(|h| h.revision());
            }
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    out.push(get);
                }
            }
        }
        Ok(out)
    }

    fn commit(self) -> TxResult<()> {
        if self.writes.writes.is_empty() {
            return Ok(());
        }
        let kv = self.kv;
        let mut compares: Vec<Compare> = self
            .seen
            .iter()
            .map(|(k, (rev, _))| Compare::mod_revision(kv.key(k), CompareOp::Equal, *rev))
            .collect();
        if let Some(rev) = self.revision {
            for (start, end) in &self.ranges {
                compares.push(
                    Compare::mod_revision(kv.key(start), CompareOp::Less, rev + 1).with_range(kv.key(end)),
                );
            }
        }
        let mut bytes = 0;
        let ops: Vec<TxnOp> = self
            .writes
            .writes
            .into_iter()
            .map(|(k, v)| {
                bytes += k.len() + v.as_ref().map_or(0, Vec::len) + 16;
                match v {
                    Some(v) => TxnOp::put(kv.key(&k), v, None),
                    None => TxnOp::delete(kv.key(&k), None),
                }
            })
            .collect();
        if compares.len() > MAX_TXN_OPS || ops.len() > MAX_TXN_OPS || bytes > MAX_REQUEST_BYTES {
            return Err(TxError::Abort(MetaError::Invalid(
                format!(
                    "the operation needs {} reads checked and {} writes ({bytes} bytes) in one etcd \
                     transaction, past etcd's limits of {MAX_TXN_OPS} operations (--max-txn-ops) and \
                     1.5 MiB (--max-request-bytes)",
                    compares.len(),
                    ops.len()
                )
                .into(),
            )));
        }
        let response = kv.call(Txn::new().when(compares).and_then(ops))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(TxError::Conflict)
        }
    }
}

impl KvTxn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        Ok(self.get_many(&[key.to_vec()])?.pop().flatten())
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> TxResult<Vec<Option<Vec<u8>>>> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.writes.get(k).is_none() && !self.seen.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let gets = missing
                .iter()
                .map(|k| TxnOp::get(self.kv.key(k), Some(self.at_revision(GetOptions::new()))))
                .collect();
            for (key, response) in missing.into_iter().zip(self.fetch(gets)?) {
                let found = response.kvs().first().map(|kv| (kv.mod_revision(), Some(kv.value().to_vec())));
                self.seen.insert(key, found.unwrap_or((0, None)));
            }
        }
        Ok(keys
            .iter()
            .map(|k| match self.writes.get(k) {
                Some(written) => written,
                None => self.seen.get(k).and_then(|(_, v)| v.clone()),
            })
            .collect())
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> TxResult<Vec<Pair>> {
        let fetch = limit.saturating_add(self.writes.scan_margin(start, end));
        let options = self.at_revision(
            GetOptions::new().with_range(self.kv.key(end)).with_limit(fetch.min(i64::MAX as usize) as i64),
        );
        let response = self.fetch(vec![TxnOp::get(self.kv.key(start), Some(options))])?.pop();
        let prefix = self.kv.prefix.len();
        let stored: Vec<Pair> = response
            .map(|r| r.kvs().iter().map(|kv| (kv.key()[prefix..].to_vec(), kv.value().to_vec())).collect())
            .unwrap_or_default();
        let complete = stored.len() < fetch;
        // Guarded up to where the scan looked: past an incomplete page's last key, later pages
        // guard their own part.
        let guarded_end = match stored.last() {
            Some((last, _)) if !complete => [last.as_slice(), &[0]].concat(),
            _ => end.to_vec(),
        };
        self.ranges.push((start.to_vec(), guarded_end));
        Ok(self.writes.overlay(stored, start, end, complete, limit))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.delete(key);
    }
}
