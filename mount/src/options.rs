//! `-o` mount options: ours, the kernel's generic ones, and the ones mount(8) and fstab pass
//! along. Anything else is refused by name.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::remote::Retry;
use elasticfs_core::FsConfig;

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub fsname: String,
    pub threads: usize,
    pub entry_ttl: Duration,
    pub engine: FsConfig,
    /// The disk cache's directory (default: one per file system under the user's cache).
    pub cache_dir: Option<PathBuf>,
    /// Bytes the disk cache may hold; 0 turns it off.
    pub disk_cache_bytes: u64,
    /// Generic kernel flags passed through as they are (noexec, nosuid, ...).
    pub kernel_flags: Vec<String>,
    /// What metadata calls do while the metadata service is away.
    pub retry: Retry,
    /// The metadata service's token (for fstab, where `--token-file` cannot be given).
    pub token_file: Option<PathBuf>,
    /// How often a mount of an embedded store collects garbage (zero: never).
    pub gc_interval: Duration,
    /// How long deleted data stays in the bucket before a collection removes it.
    pub gc_grace: Duration,
    /// Where to serve Prometheus metrics (`host:port`), if anywhere.
    pub metrics: Option<String>,
    /// `commit=DURATION`: metadata changes acknowledged once applied and made durable at least
    /// this often (and on fsync and unmount); `None`: durable when acknowledged.
    pub commit: Option<Duration>,
}

/// How long a `soft` mount waits for the metadata service unless `timeo=` says otherwise.
const DEFAULT_SOFT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            // SAFETY: geteuid has no preconditions.
            allow_other: unsafe { libc::geteuid() } == 0,
            fsname: "elasticfs".into(),
            threads: 8,
            entry_ttl: Duration::from_secs(1),
            engine: FsConfig::default(),
            cache_dir: None,
            disk_cache_bytes: 10 << 30,
            kernel_flags: Vec::new(),
            retry: Retry::Hard,
            token_file: None,
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
            metrics: None,
            commit: None,
        }
    }
}

const KNOWN: &str = "ro, rw, allow_other, allow_root, fsname=, threads=, cache-size=, cache-dir=, \
    disk-cache=, write-buffer=, uploads=, readahead=, attr-cache=, entry-cache=, hard, soft, timeo=, token-file=, gc-interval=, gc-grace=, metrics=, commit=, noexec, exec, nosuid, suid, nodev, dev, noatime, atime, \
    and the mount(8)/fstab options defaults, auto, noauto, user, nouser, users, _netdev, nofail";

impl MountOptions {
    /// Parses comma-separated option lists (several `-o` may be given).
    pub fn parse<'a>(lists: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut opts = MountOptions::default();
        let (mut soft, mut timeout) = (false, DEFAULT_SOFT_TIMEOUT);
        for item in lists.into_iter().flat_map(|l| l.split(',')).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let need = |v: Option<&'a str>| -> Result<&'a str> {
                v.with_context(|| format!("mount option {key:?} needs a value ({key}=...)"))
            };
            match key {
                "ro" => {
                    opts.read_only = true;
                    opts.engine.compact_found = false;
                }
                "rw" => {
                    opts.read_only = false;
                    opts.engine.compact_found = true;
                }
                "allow_other" | "allow_root" => opts.allow_other = true,
                "fsname" => opts.fsname = need(value)?.to_string(),
                "threads" => opts.threads = need(value)?.parse().context("threads= takes a number")?,
                "cache-size" => opts.engine.cache_bytes = parse_size(need(value)?)? as usize,
                "cache-dir" => opts.cache_dir = Some(PathBuf::from(need(value)?)),
                "disk-cache" => opts.disk_cache_bytes = parse_size(need(value)?)?,
                "write-buffer" => opts.engine.write_buffer_bytes = parse_size(need(value)?)? as usize,
                "uploads" => {
                    opts.engine.max_uploads = need(value)?.parse().context("uploads= takes a number")?
                }
                "readahead" => {
                    opts.engine.max_readahead_blocks =
                        need(value)?.parse().context("readahead= takes a number of blocks")?
                }
                "attr-cache" => opts.engine.attr_cache = parse_duration(need(value)?)?,
                "entry-cache" => opts.entry_ttl = parse_duration(need(value)?)?,
                "hard" => soft = false,
                "soft" => soft = true,
                "timeo" => timeout = parse_duration(need(value)?)?,
                "token-file" => opts.token_file = Some(PathBuf::from(need(value)?)),
                "gc-interval" => opts.gc_interval = parse_duration(need(value)?)?,
                "gc-grace" => opts.gc_grace = parse_duration(need(value)?)?,
                "metrics" => opts.metrics = Some(need(value)?.to_string()),
                "commit" => {
                    let value = need(value)?;
                    opts.commit =
                        Some(parse_commit(value).map_err(|e| anyhow::anyhow!("commit={value}: {e:#}"))?)
                }
                "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" | "noatime" | "atime" => {
                    opts.kernel_flags.push(key.to_string())
                }
                // Read by mount(8) and systemd, not by the file system.
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev" | "nofail" => {}
                other => bail!("unknown mount option {other:?}; known options: {KNOWN}"),
            }
        }
        opts.retry = if soft { Retry::Soft(timeout) } else { Retry::Hard };
        if opts.threads == 0 {
            bail!("threads= must be at least 1");
        }
        Ok(opts)
    }
}

/// `123`, `64K`, `256M`, `4MiB`, `2G`, `2.1TiB`.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num.parse().with_context(|| format!("{text:?} is not a size (examples: 4M, 64KiB, 1G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => bail!("{text:?}: unknown size unit (use K, M, G or T)"),
    };
    let bytes = n * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        bail!("{text:?} is too large");
    }
    Ok(bytes.round() as u64)
}

/// `1.5 GiB`, `200 MiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

/// A deferred-commit interval (`-o commit=`, `meta serve --commit`): a duration, not zero.
pub fn parse_commit(text: &str) -> Result<Duration> {
    let every = parse_duration(text)?;
    if every.is_zero() {
        bail!("a commit interval of 0 would never make a change durable: give a duration such as 5s");
    }
    Ok(every)
}

/// `500ms`, `1s`, `2` (seconds), `10m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit_secs) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (examples: 500ms, 30s, 10m, 1h)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        bail!("{text:?} is not a duration (examples: 500ms, 30s, 10m, 1h)");
    }
    Ok(Duration::from_secs_f64(n * unit_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_options_and_refuses_unknown_ones_by_name() {
        let o = MountOptions::parse(["ro,cache-size=64M,_netdev", "attr-cache=500ms,threads=2"]).unwrap();
        assert!(o.read_only);
        assert!(!o.engine.compact_found, "a read-only mount does not compact what it reads");
        assert_eq!(o.engine.cache_bytes, 64 << 20);
        assert_eq!(o.engine.attr_cache, Duration::from_millis(500));
        assert_eq!(o.threads, 2);
        let err = MountOptions::parse(["rw,bogus=1"]).unwrap_err().to_string();
        assert!(err.contains("\"bogus\""), "{err}");
        assert!(MountOptions::parse(["fsname"]).is_err());
        assert_eq!(o.retry, Retry::Hard);
        let soft = MountOptions::parse(["soft,timeo=5s"]).unwrap();
        assert_eq!(soft.retry, Retry::Soft(Duration::from_secs(5)));
    }

    #[test]
    fn commit_takes_a_duration_that_is_not_zero() {
        assert_eq!(MountOptions::default().commit, None, "durable when acknowledged by default");
        assert_eq!(MountOptions::parse(["commit=5s"]).unwrap().commit, Some(Duration::from_secs(5)));
        let err = MountOptions::parse(["commit=0"]).unwrap_err().to_string();
        assert!(err.contains("never make a change durable"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_size("2.5K").unwrap(), 2560);
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
    }
}
