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

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, TlsOptions, Txn};
use tonic::Code;
use tracing::{info, warn};

mod receipts;
mod recent;
mod txn;

use super::{Body, Kv, TxError, TxResult};
use crate::error::{MetaError, MetaResult};
use receipts::Receipts;
use recent::RecentKeys;
use txn::EtcdTxn;

/// etcd's default `--max-txn-ops`: compares and operations each (one of each is the commit's
/// receipt, see [`receipts`]).
const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB), less room for the request's framing.
const MAX_REQUEST_BYTES: usize = (3 << 19) - (16 << 10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a new client waits for a cluster that answers without a leader: etcd elects one
/// within a few election timeouts (1 s each by default).
const ELECTION_WAIT: Duration = Duration::from_secs(10);

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
    receipts: Receipts,
    recent: RecentKeys,
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
            receipts: Receipts::new(),
            recent: RecentKeys::new(),
            outage: Default::default(),
            client,
            runtime,
            prefix: format!("{}/", options.name).into_bytes(),
            options,
        };
        // A first read, so that a wrong address, a wrong CA or a refused login is reported
        // now rather than waited out. A member that is down is passed over: the client sends
        // each attempt to the next member. A cluster that answers but is electing a leader
        // (a member was just lost) is given ELECTION_WAIT to finish.
        let probe = Txn::new().and_then(vec![etcd_client::TxnOp::get(kv.key(b"S"), None)]);
        let started = Instant::now();
        let mut attempts = 0;
        while let Err(e) = kv.send(probe.clone()) {
            attempts += 1;
            let electing = is_electing(&e) && started.elapsed() < ELECTION_WAIT;
            if !is_transient(&e) || (attempts >= 2 * kv.options.endpoints.len() && !electing) {
                return Err(unavailable(&describe, &e));
            }
            if electing {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
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

    /// Sends one transaction once.
    fn send(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let mut client = self.client.clone();
        let answer = self.block_on(async move { client.txn(txn).await });
        if answer.is_ok() && self.outage.swap(false, std::sync::atomic::Ordering::Relaxed) {
            info!("{} answers again", describe(&self.options));
        }
        answer
    }

    /// Sends a transaction that only reads, again while the cluster is unreachable (for
    /// ever, or until `give_up_after`).
    fn read_txn(&self, txn: Txn) -> TxResult<etcd_client::TxnResponse> {
        let mut wait = Patience::new(self);
        loop {
            match self.send(txn.clone()) {
                Ok(response) => return Ok(response),
                Err(e) => wait.after(&e)?,
            }
        }
    }
}

/// Waiting out an unreachable cluster: backoff, one warning per outage, and the give-up
/// deadline of a soft mount. The client spreads calls over the members, so the first failures
/// are retried at once: the next call likely goes to a member that is up. Only when every
/// member has had its chance does the caller wait.
struct Patience<'a> {
    kv: &'a EtcdKv,
    started: Instant,
    delay: Duration,
    failures: usize,
}

impl<'a> Patience<'a> {
    fn new(kv: &'a EtcdKv) -> Self {
        Patience { kv, started: Instant::now(), delay: Duration::from_millis(50), failures: 0 }
    }

    /// Waits before the next attempt after `e`, or says why there is none.
    fn after(&mut self, e: &etcd_client::Error) -> TxResult<()> {
        let kv = self.kv;
        if is_compacted(e) {
            return Err(TxError::Conflict);
        }
        if !is_transient(e) || kv.options.give_up_after.is_some_and(|limit| self.started.elapsed() >= limit) {
            return Err(TxError::Abort(unavailable(&describe(&kv.options), e)));
        }
        self.failures += 1;
        if self.failures <= 2 * kv.options.endpoints.len() {
            return Ok(());
        }
        if !kv.outage.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!("{} does not answer ({e}); retrying", describe(&kv.options));
        }
        std::thread::sleep(self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        Ok(())
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

/// Whether the call may succeed if sent again: the cluster unreachable, without a leader,
/// changing leaders, or slower than the request timeout. Resending a commit is safe (see
/// [`receipts`]).
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let message = s.message();
            // Cancelled: the client's own request timeout (a member that died mid-request).
            matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted
            ) || message.contains("timed out")
                || is_electing(e)
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Whether a member answered that the cluster has no leader at the moment.
fn is_electing(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("no leader") || s.message().contains("leader changed"))
}

impl Kv for EtcdKv {
    /// A first attempt reads what it can from what this client recently saw, which usually
    /// leaves it nothing to fetch but its commit. If it fails having taken anything from there,
    /// it may have failed on a stale value: the body runs again at once on fresh reads.
    fn transact(&self, body: Body) -> TxResult<()> {
        let mut seeded = EtcdTxn::new(self, true);
        let outcome = body(&mut seeded).and_then(|()| seeded.commit());
        let stale = match &outcome {
            Ok(()) | Err(TxError::Abort(MetaError::Unavailable(_))) => false,
            Err(_) => seeded.took_recent(),
        };
        if !stale {
            if matches!(outcome, Err(TxError::Conflict)) {
                seeded.forget_reads();
            }
            return outcome;
        }
        seeded.forget_reads();
        let mut fresh = EtcdTxn::new(self, false);
        let outcome = body(&mut fresh).and_then(|()| fresh.commit());
        if matches!(outcome, Err(TxError::Conflict)) {
            fresh.forget_reads();
        }
        outcome
    }

    fn read(&self, body: Body) -> TxResult<()> {
        let mut txn = EtcdTxn::new(self, false);
        body(&mut txn)?;
        txn.remember_empty_scans();
        Ok(())
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn describe(&self) -> String {
        describe(&self.options)
    }
}
