//! Where a file system lives: its metadata URL, and opening or formatting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::kv::{EtcdKv, EtcdOptions};
use elasticfs_core::metadata::remote::tls::TlsClient;
use elasticfs_core::metadata::remote::{ClientOptions, RemoteStore, Retry};
use elasticfs_core::metadata::throughput::ThroughputSettings;
use elasticfs_core::metadata::{ClientInfo, Engine, MetaStore, SledStore, Superblock};
use elasticfs_core::ownership::{self, Ownership};
use elasticfs_core::{connect_chunk_store, connect_object_store, DiskCache, FileSystem};
use tracing::{info, warn};

use crate::options::MountOptions;
use crate::status::elasticfs_runtime;

/// The embedded default volume: `~/.local/share/elasticfs/` (metadata and chunks side by side).
pub fn default_home() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("elasticfs")
}

pub fn default_meta_url() -> String {
    format!("sled://{}", default_home().join("meta").display())
}

pub fn default_storage_url() -> String {
    format!("file://{}", default_home().join("chunks").display())
}

/// Where a file system's metadata is, and the token for a metadata service.
#[derive(Clone, Debug)]
pub struct MetaAccess {
    pub url: String,
    pub token_file: Option<PathBuf>,
}

impl MetaAccess {
    /// `url`, or the embedded default.
    pub fn new(url: Option<String>, token_file: Option<PathBuf>) -> Self {
        MetaAccess { url: url.unwrap_or_else(default_meta_url), token_file }
    }
}

/// A parsed `--meta` URL.
pub enum MetaUrl {
    /// Embedded: this process opens the store itself.
    Sled(PathBuf),
    /// A metadata service (`elasticfs meta serve`), in TLS when `tls_ca` is set.
    Service { addr: String, host: String, tls_ca: Option<PathBuf> },
    /// An etcd cluster: this process talks to it directly.
    Etcd(EtcdOptions),
}

const META_URL_FORMS: &str = "sled:///path/to/meta, etcd://host1:2379,host2:2379,host3:2379/NAME, \
     tcp://host:port, or tls://host:port?ca=/path/to/ca.pem (or ELASTICFS_TLS_CA)";

impl MetaUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sled://") {
            if !path.starts_with('/') {
                bail!("metadata URL {url:?} needs an absolute path: sled:///var/lib/elasticfs/meta");
            }
            return Ok(MetaUrl::Sled(PathBuf::from(path)));
        }
        let (tls, rest) = match url.split_once("://") {
            Some(("etcd", rest)) => return Ok(MetaUrl::Etcd(crate::etcd_url::parse(url, false, rest)?)),
            Some(("etcds", rest)) => return Ok(MetaUrl::Etcd(crate::etcd_url::parse(url, true, rest)?)),
            Some(("tcp", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            _ => bail!("metadata URL {url:?} is not understood: use {META_URL_FORMS}"),
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr = addr.trim_end_matches('/');
        let Some((host, port)) = addr.rsplit_once(':') else {
            bail!("metadata URL {url:?} needs a port: tcp://host:port");
        };
        port.parse::<u16>().with_context(|| format!("metadata URL {url:?}: {port:?} is not a port"))?;
        let ca = query.split('&').find_map(|kv| kv.strip_prefix("ca=")).map(PathBuf::from);
        let tls_ca = match (tls, ca.or_else(|| std::env::var_os("ELASTICFS_TLS_CA").map(PathBuf::from))) {
            (false, _) => None,
            (true, Some(ca)) => Some(ca),
            (true, None) => bail!(
                "metadata URL {url:?} asks for TLS but names no CA certificate: add ?ca=/path/to/ca.pem or set ELASTICFS_TLS_CA"
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(MetaUrl::Service { addr: addr.to_string(), host, tls_ca })
    }
}

/// Who opens the metadata: a mount registers a session; a tool (format, status, fsck) does not.
pub enum Role<'a> {
    Tool,
    /// `commit`: the mount's `commit=` (deferred durability), for an embedded store only.
    Mount {
        mountpoint: &'a Path,
        retry: Retry,
        commit: Option<Duration>,
    },
}

fn absolute(path: &Path) -> String {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// A shared token: the file's bytes without trailing whitespace.
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim_ascii_end().to_vec();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

fn client_options(
    access: &MetaAccess,
    host: &str,
    tls_ca: Option<&Path>,
    role: &Role,
) -> Result<ClientOptions> {
    let (client, retry) = match role {
        // A tool fails rather than hangs when the service is away.
        Role::Tool => (None, Retry::Soft(Duration::from_secs(10))),
        Role::Mount { mountpoint, retry, .. } => {
            (Some(ClientInfo::this_process(&absolute(mountpoint))), *retry)
        }
    };
    Ok(ClientOptions {
        token: access.token_file.as_deref().map(read_token).transpose()?,
        tls: tls_ca.map(|ca| TlsClient::new(ca, host)).transpose()?,
        client,
        retry,
    })
}

/// Settings for a new file system.
pub struct FormatSpec {
    pub name: String,
    pub storage: String,
    pub block_size: u32,
    pub inline_threshold: u32,
    pub throughput: ThroughputSettings,
}

pub fn format(access: &MetaAccess, spec: &FormatSpec) -> Result<Superblock> {
    let url = MetaUrl::parse(&access.url)?;
    if !spec.block_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&spec.block_size) {
        bail!("block size {} is not a power of two between 64 KiB and 64 MiB", spec.block_size);
    }
    if spec.inline_threshold > spec.block_size.min(1 << 20) {
        bail!("inline threshold {} must not exceed the block size or 1 MiB", spec.inline_threshold);
    }
    let sb = Superblock {
        throughput: spec.throughput,
        ..Superblock::new(&spec.name, spec.block_size, spec.inline_threshold, &spec.storage)
    };
    // The bucket first: a typo must not leave a half-made file system, and a location another
    // file system owns is refused before anything is written.
    let store = connect_object_store(&spec.storage, Ownership::Claim(&sb))?;
    let formatted = format_metadata(access, url, &sb);
    if formatted.is_err() {
        // The location goes back to nobody, so that a corrected format may claim it.
        let release = ownership::release(&store, &spec.storage, &sb);
        if let Err(e) = elasticfs_runtime()?.block_on(release) {
            warn!("{e}");
        }
    }
    formatted.map(|()| sb)
}

fn format_metadata(access: &MetaAccess, url: MetaUrl, sb: &Superblock) -> Result<()> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    match url {
        MetaUrl::Sled(path) => {
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
            SledStore::format(&path, sb, uid, gid)?;
        }
        MetaUrl::Service { addr, host, tls_ca } => {
            let options = client_options(access, &host, tls_ca.as_deref(), &Role::Tool)?;
            RemoteStore::format(&addr, options, sb, uid, gid)?;
        }
        MetaUrl::Etcd(options) => {
            let options = EtcdOptions { give_up_after: Some(TOOL_PATIENCE), ..options };
            Engine::format_kv(EtcdKv::connect(options)?, sb, uid, gid)?;
        }
    }
    Ok(())
}

/// How long a tool (format, status, fsck, gc, config) waits for an unreachable store.
const TOOL_PATIENCE: Duration = Duration::from_secs(10);

/// How long a mount waits for an exiting mount to let go of an embedded store.
const EXITING_HOLDER_PATIENCE: Duration = Duration::from_secs(15);

/// Checks what can be checked of `--meta` without opening it (a background mount does this
/// before it forks, so that its user sees the error): the URL's form, for an embedded store
/// that it holds a file system, and that `commit=` is given for an embedded store only.
pub fn check_meta_url(url: &str, commit: Option<Duration>) -> Result<()> {
    match MetaUrl::parse(url)? {
        MetaUrl::Sled(path) if !SledStore::exists(&path) => {
            bail!("no file system at {}: format it first (elasticfs format --meta {url})", path.display())
        }
        MetaUrl::Sled(_) => Ok(()),
        _ if commit.is_some() => Err(deferred_commits_refused()),
        _ => Ok(()),
    }
}

fn deferred_commits_refused() -> anyhow::Error {
    anyhow::anyhow!(
        "-o commit= defers durability of an embedded store (sled://) only: a metadata service or \
         etcd commits every change durably before it answers, and a client cannot change that; \
         drop the option"
    )
}

pub fn open_meta(access: &MetaAccess, role: Role) -> Result<Arc<dyn MetaStore>> {
    match MetaUrl::parse(&access.url)? {
        MetaUrl::Sled(path) => {
            let store = match role {
                Role::Tool => SledStore::open(&path)?,
                // `umount DIR && mount DIR`: the mount just unmounted may still be committing,
                // so wait for it; but not for one that is still mounted.
                Role::Mount { .. } if crate::status::held_by_live_mount(&access.url) => {
                    SledStore::open(&path)?
                }
                Role::Mount { .. } => SledStore::open_waiting(&path, EXITING_HOLDER_PATIENCE)?,
            };
            match role {
                Role::Tool => Ok(Arc::new(store)),
                Role::Mount { mountpoint, commit, .. } => {
                    if let Some(every) = commit {
                        store.defer_commits(every);
                    }
                    // This process holds the store alone: whoever used it before is gone, and
                    // what their sessions held (locks, files unlinked while open) goes too.
                    let reclaimed = store.end_all_sessions()?;
                    if reclaimed > 0 {
                        info!(reclaimed, "removed files unlinked while open before the last shutdown");
                    }
                    let client = ClientInfo::this_process(&absolute(mountpoint));
                    Ok(Arc::new(store.start_session(client, None)?))
                }
            }
        }
        MetaUrl::Service { .. } | MetaUrl::Etcd(_) if matches!(role, Role::Mount { commit: Some(_), .. }) => {
            Err(deferred_commits_refused())
        }
        MetaUrl::Service { addr, host, tls_ca } => {
            let options = client_options(access, &host, tls_ca.as_deref(), &role)?;
            Ok(Arc::new(RemoteStore::connect(&addr, options)?))
        }
        MetaUrl::Etcd(options) => open_etcd(options, role),
    }
}

/// A client of an etcd cluster: a mount registers a session with a lease and heartbeats it.
fn open_etcd(options: EtcdOptions, role: Role) -> Result<Arc<dyn MetaStore>> {
    let give_up_after = match role {
        Role::Tool => Some(TOOL_PATIENCE),
        Role::Mount { retry: Retry::Soft(timeo), .. } => Some(timeo),
        Role::Mount { retry: Retry::Hard, .. } => None,
    };
    let store = Engine::open_kv(EtcdKv::connect(EtcdOptions { give_up_after, ..options })?)?;
    match role {
        Role::Tool => Ok(Arc::new(store)),
        Role::Mount { mountpoint, .. } => {
            // Whoever stopped heartbeating before we came goes now, not a lease from now.
            store.end_expired_sessions()?;
            let client = ClientInfo::this_process(&absolute(mountpoint));
            Ok(Arc::new(store.start_session(client, Some(crate::etcd_url::session_lease()))?))
        }
    }
}

/// Opens the engine over an existing file system, with a disk cache unless its size is 0.
pub fn open_filesystem(access: &MetaAccess, mountpoint: &Path, opts: &MountOptions) -> Result<FileSystem> {
    let meta = open_meta(access, Role::Mount { mountpoint, retry: opts.retry, commit: opts.commit })?;
    let storage = meta.superblock().storage.clone();
    let ownership = Ownership::CheckOrAdopt(meta.superblock());
    let mut chunks = connect_chunk_store(&storage, opts.engine.cache_bytes, ownership)?;
    if opts.disk_cache_bytes > 0 {
        let dir =
            opts.cache_dir.clone().unwrap_or_else(|| default_cache_root().join(&meta.superblock().uuid));
        chunks = chunks.with_disk_cache(DiskCache::open(&dir, opts.disk_cache_bytes)?);
    }
    Ok(FileSystem::new(meta, chunks, opts.engine.clone())?)
}

/// `/var/cache/elasticfs` for root, else the user's cache directory.
fn default_cache_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/elasticfs");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("elasticfs")
}

/// Whether the embedded store at `meta_url` already holds a file system.
pub fn is_formatted(meta_url: &str) -> Result<bool> {
    match MetaUrl::parse(meta_url)? {
        MetaUrl::Sled(path) => Ok(SledStore::exists(&path)),
        MetaUrl::Service { .. } | MetaUrl::Etcd(_) => bail!("{meta_url} is not an embedded store"),
    }
}
