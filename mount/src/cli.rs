//! The `elasticfs` command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use elasticfs_core::metadata::throughput::ThroughputSettings;

use crate::options::{parse_duration, parse_size};
use crate::volume::{self, FormatSpec, MetaAccess, Role};

#[derive(Parser, Debug)]
#[command(name = "elasticfs", version, about = "An elastic, shared POSIX file system on object storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StorageKind {
    /// A local directory (the embedded default).
    File,
    /// Any S3-compatible bucket.
    S3,
    /// Memory only: lost at unmount (for experiments).
    Memory,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new file system.
    Format {
        /// Metadata URL: sled:///path (default: ~/.local/share/elasticfs/meta), etcd://h1:2379,h2:2379/NAME, tcp://host:port
        /// or tls://host:port?ca=FILE (a metadata service).
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "file")]
        storage: StorageKind,
        /// file: a directory; s3: s3://bucket[/prefix] or http(s)://endpoint/bucket[/prefix].
        #[arg(long)]
        bucket: Option<String>,
        /// S3 region (default: AWS_REGION).
        #[arg(long)]
        region: Option<String>,
        /// Logical block size (a power of two, 64K to 64M).
        #[arg(long, default_value = "4M")]
        block_size: String,
        /// Blocks up to this size are kept inline in the metadata.
        #[arg(long, default_value = "64K")]
        inline_threshold: String,
        #[arg(long, default_value = "elasticfs")]
        name: String,
        #[command(flatten)]
        throughput: ThroughputArgs,
    },
    /// Mount a file system with FUSE.
    Mount {
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        mountpoint: PathBuf,
        /// Return once the mount is ready and keep serving in the background.
        #[arg(short = 'd', long)]
        background: bool,
        /// Mount options (comma-separated; may repeat).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Log file for a background mount.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Unmount a mounted file system.
    Umount {
        mountpoint: PathBuf,
        /// Detach now and clean up when no longer busy.
        #[arg(short, long)]
        lazy: bool,
    },
    /// Show a file system's settings and usage.
    Status {
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show or change a file system's settings (the throughput mode and rates).
    Config {
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        throughput: ThroughputArgs,
    },
    /// Delete chunks nothing references any more (after a grace period) and leaked objects.
    Gc {
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep deleted data this long (e.g. 0s, 10m, 1h).
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Check the metadata (counters, link counts, chunk references) and that every referenced
    /// chunk exists (with --verify-data: hashes to its name). Reports; repairs nothing.
    Fsck {
        #[arg(long, env = "ELASTICFS_META")]
        meta: Option<String>,
        /// The metadata service's shared token.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[arg(long)]
        verify_data: bool,
    },
    /// The shared metadata service.
    Meta {
        #[command(subcommand)]
        command: MetaCommand,
    },
    /// The NFS gateway.
    Nfs {
        #[command(subcommand)]
        command: NfsCommand,
    },
    /// Install /sbin/mount.elasticfs so that `mount -t elasticfs` and fstab work.
    InstallHelper {
        #[arg(long, default_value = "/sbin/mount.elasticfs")]
        path: PathBuf,
    },
}

/// The throughput settings of `format` and `config`.
#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    /// elastic[:CEILING] (the default, as EFS's console creates file systems), bursting,
    /// provisioned:RATE (e.g. provisioned:200MiB) or off.
    #[arg(long)]
    throughput: Option<String>,
    /// A rate of the throughput model, NAME=VALUE: baseline-per-tib, burst-per-tib,
    /// burst-floor, metered-floor, credit-cap-per-tib, read-divisor, min-request,
    /// elastic-ceiling (may repeat).
    #[arg(long = "throughput-option")]
    options: Vec<String>,
}

impl ThroughputArgs {
    fn is_empty(&self) -> bool {
        self.throughput.is_none() && self.options.is_empty()
    }

    fn apply(&self, base: ThroughputSettings) -> Result<ThroughputSettings> {
        crate::throughput_spec::parse(self.throughput.as_deref(), &self.options, base)
    }
}

// Parsed once per process: the size of its largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum MetaCommand {
    /// Serve a metadata store to every client of the file system.
    Serve {
        /// The store's directory (formatted over the network with `elasticfs format --meta tcp://…`).
        #[arg(long)]
        db: PathBuf,
        /// Address to listen on, e.g. 0.0.0.0:9400 (port 0 picks a free one).
        #[arg(long)]
        listen: String,
        /// Clients must present the token in this file.
        #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// PEM certificate chain: serve TLS (clients use tls://host:port?ca=…).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A client that sends no heartbeat for this long loses its session, locks and
        /// open-after-unlink files.
        #[arg(long, default_value = "30s")]
        lease: String,
        /// How often to delete unreferenced chunks from the bucket (0: never). The service
        /// needs the bucket's credentials (AWS_* variables) for it.
        #[arg(long, default_value = "1h")]
        gc_interval: String,
        /// How long deleted data stays in the bucket first.
        #[arg(long, default_value = "1h")]
        gc_grace: String,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9567).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Answer changes once applied and make them durable at least this often (and at a
        /// client's fsync), instead of before each answer: for scratch and build trees. A crash
        /// of the host loses at most this long of acknowledged changes, never one fsynced.
        #[arg(long, value_name = "DURATION")]
        commit: Option<String>,
    },
    /// Write a file system's metadata to stdout (a versioned stream, from one snapshot), to
    /// move it to another store with `meta load`.
    Dump {
        /// Metadata URL: sled:///path or etcd://h1:2379,h2:2379/NAME.
        #[arg(long)]
        meta: String,
    },
    /// Load a dump from stdin into an empty store (sled:///path or etcd://…/NAME).
    Load {
        #[arg(long)]
        meta: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NfsCommand {
    /// Serve the file system over NFSv3, NFSv4.0 and NFSv4.1 (NFS and MOUNT on one TCP port, no
    /// portmapper).
    Serve(crate::serve_nfs::NfsArgs),
}

/// Runs a parsed command; `argv` is what it was parsed from (a background mount re-runs it).
pub fn run(cli: Cli, argv: &[String]) -> Result<()> {
    match cli.command {
        Command::Format {
            meta,
            token_file,
            storage,
            bucket,
            region,
            block_size,
            inline_threshold,
            name,
            throughput,
        } => {
            let access = MetaAccess::new(meta, token_file);
            let storage = storage_url(storage, bucket.as_deref(), region.as_deref(), &access.url)?;
            let spec = FormatSpec {
                name,
                storage,
                block_size: u32::try_from(parse_size(&block_size)?).context("block size too large")?,
                inline_threshold: u32::try_from(parse_size(&inline_threshold)?)
                    .context("inline threshold too large")?,
                throughput: throughput.apply(ThroughputSettings::default())?,
            };
            let sb = volume::format(&access, &spec)?;
            println!(
                "formatted {} ({}) at {}: storage {}, block size {}",
                sb.name, sb.uuid, access.url, sb.storage, sb.block_size
            );
            Ok(())
        }
        Command::Mount { meta, token_file, mountpoint, background, options, log } => {
            crate::mounting::mount(meta, token_file, &mountpoint, background, &options, log, argv)
        }
        Command::Umount { mountpoint, lazy } => crate::mounting::umount(&mountpoint, lazy),
        Command::Status { meta, token_file, json } => {
            crate::status::status(&MetaAccess::new(meta, token_file), json)
        }
        Command::Config { meta, token_file, throughput } => {
            let meta = volume::open_meta(&MetaAccess::new(meta, token_file), Role::Tool)?;
            let current = meta.throughput()?.settings;
            if !throughput.is_empty() {
                meta.set_throughput(&throughput.apply(current)?)?;
            }
            let settings = meta.throughput()?.settings;
            println!("throughput mode     {}", crate::throughput_spec::describe(&settings.mode));
            for (name, value) in crate::throughput_spec::settings(&settings) {
                println!("{name:<20}{value}");
            }
            Ok(())
        }
        Command::Gc { meta, token_file, dry_run, grace } => {
            crate::collect::gc(&MetaAccess::new(meta, token_file), dry_run, parse_duration(&grace)?)
        }
        Command::Fsck { meta, token_file, verify_data } => {
            crate::fsck::fsck(&MetaAccess::new(meta, token_file), verify_data)
        }
        Command::Meta {
            command:
                MetaCommand::Serve {
                    db,
                    listen,
                    token_file,
                    tls_cert,
                    tls_key,
                    lease,
                    gc_interval,
                    gc_grace,
                    metrics,
                    commit,
                },
        } => crate::serve_meta::serve(crate::serve_meta::ServeArgs {
            db,
            listen,
            token_file,
            tls: tls_cert.zip(tls_key),
            lease: parse_duration(&lease)?,
            gc_interval: parse_duration(&gc_interval)?,
            gc_grace: parse_duration(&gc_grace)?,
            metrics,
            commit: commit.as_deref().map(crate::options::parse_commit).transpose()?,
        }),
        Command::Meta { command: MetaCommand::Dump { meta } } => {
            crate::dump::dump(&meta, &mut std::io::stdout().lock())
        }
        Command::Meta { command: MetaCommand::Load { meta } } => {
            crate::dump::load(&meta, &mut std::io::stdin().lock())
        }
        Command::Nfs { command: NfsCommand::Serve(args) } => crate::serve_nfs::serve(args),
        Command::InstallHelper { path } => install_helper(&path),
    }
}

/// The storage URL kept in the superblock (never with credentials).
fn storage_url(
    kind: StorageKind,
    bucket: Option<&str>,
    region: Option<&str>,
    meta_url: &str,
) -> Result<String> {
    match kind {
        StorageKind::Memory => Ok("memory://".into()),
        StorageKind::File => {
            let dir = match bucket {
                Some(b) => PathBuf::from(b.strip_prefix("file://").unwrap_or(b)),
                None => default_chunk_dir(meta_url)?,
            };
            let dir = if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) };
            Ok(format!("file://{}", dir.display()))
        }
        StorageKind::S3 => {
            let bucket =
                bucket.context("--storage s3 needs --bucket s3://name or --bucket http://endpoint/name")?;
            let mut params = Vec::new();
            let path = if let Some(rest) = bucket.strip_prefix("s3://") {
                rest.to_string()
            } else if let Some((scheme, rest)) =
                bucket.split_once("://").filter(|(s, _)| *s == "http" || *s == "https")
            {
                let (host, path) =
                    rest.split_once('/').context("--bucket http://endpoint/name needs a bucket name")?;
                params.push(format!("endpoint={scheme}://{host}"));
                path.to_string()
            } else {
                bail!("--bucket {bucket:?}: use s3://name[/prefix] or http(s)://endpoint/name[/prefix]");
            };
            if path.trim_matches('/').is_empty() {
                bail!("--bucket {bucket:?} names no bucket");
            }
            if let Some(region) = region {
                params.push(format!("region={region}"));
            }
            let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
            Ok(format!("s3://{}{query}", path.trim_matches('/')))
        }
    }
}

/// Where `format --storage file` without `--bucket` keeps chunks: the default volume's
/// directory for the default metadata, else a directory of its own beside the metadata, so that
/// a second file system never lands on another's chunks.
fn default_chunk_dir(meta_url: &str) -> Result<PathBuf> {
    if meta_url == volume::default_meta_url() {
        return Ok(volume::default_home().join("chunks"));
    }
    match volume::MetaUrl::parse(meta_url)? {
        volume::MetaUrl::Sled(meta) => {
            let mut dir = meta.into_os_string();
            dir.push(".chunks");
            Ok(PathBuf::from(dir))
        }
        volume::MetaUrl::Service { .. } | volume::MetaUrl::Etcd(_) => bail!(
            "--storage file with shared metadata (a metadata service or etcd) needs --bucket DIR (a directory of this file \
             system's own, at the same path on every client)"
        ),
    }
}

fn install_helper(path: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    std::os::unix::fs::symlink(&exe, path)
        .with_context(|| format!("linking {} to {} (run as root)", path.display(), exe.display()))?;
    println!("installed {} -> {}", path.display(), exe.display());
    Ok(())
}

/// `mount.elasticfs META_URL DIR [-o opts] [-s -f -n -v]`, as mount(8) calls it, as the
/// arguments of an equivalent `elasticfs mount`.
pub fn mount_helper_args(args: &[String]) -> Result<Vec<String>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-o" => options.push(it.next().context("-o needs a value")?.clone()),
            // sloppy, fake, no-mtab, verbose: nothing for us to do.
            "-s" | "-f" | "-n" | "-v" => {}
            other if other.starts_with("-o") => options.push(other[2..].to_string()),
            other => positional.push(other.to_string()),
        }
    }
    let [meta, dir] = positional.as_slice() else {
        bail!("usage: mount.elasticfs META_URL MOUNTPOINT [-o options]");
    };
    let mut out =
        vec!["elasticfs".into(), "mount".into(), "--meta".into(), meta.clone(), dir.clone(), "-d".into()];
    for o in options {
        out.push("-o".into());
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_bucket_forms() {
        assert_eq!(storage_url(StorageKind::S3, Some("s3://b/p"), None, "tcp://h:1").unwrap(), "s3://b/p");
        assert_eq!(
            storage_url(StorageKind::S3, Some("http://127.0.0.1:9000/b"), Some("us-east-1"), "tcp://h:1")
                .unwrap(),
            "s3://b?endpoint=http://127.0.0.1:9000&region=us-east-1"
        );
        assert!(storage_url(StorageKind::S3, None, None, "tcp://h:1").is_err());
        assert!(storage_url(StorageKind::S3, Some("ftp://x/b"), None, "tcp://h:1").is_err());
    }

    #[test]
    fn a_file_system_without_bucket_gets_chunks_of_its_own() {
        let own = storage_url(StorageKind::File, None, None, "sled:///a/meta2").unwrap();
        assert_eq!(own, "file:///a/meta2.chunks");
        let default = storage_url(StorageKind::File, None, None, &volume::default_meta_url()).unwrap();
        assert_eq!(default, volume::default_storage_url());
        assert!(storage_url(StorageKind::File, None, None, "tcp://h:1").is_err());
    }

    #[test]
    fn helper_arguments_become_a_background_mount() {
        let args: Vec<String> =
            ["sled:///m", "/mnt/x", "-o", "rw,_netdev", "-n"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            mount_helper_args(&args).unwrap(),
            ["elasticfs", "mount", "--meta", "sled:///m", "/mnt/x", "-d", "-o", "rw,_netdev"]
        );
    }
}
