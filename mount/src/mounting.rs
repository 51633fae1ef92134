//! Mounting and unmounting: checks on the mount point, the fuser session, background mode and
//! clean unmount on SIGINT/SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Config, MountOption, SessionACL};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{info, warn};

use crate::fuse::FuseAdapter;
use crate::metrics_endpoint::{self, client_registry};
use crate::options::MountOptions;
use crate::page_fill::PageFillMetrics;
use crate::status::StatusWriter;
use crate::volume::{self, FormatSpec, MetaAccess};

/// Set in a background mount's child: print "ready" on stdout once mounted.
const READY_ENV: &str = "ELASTICFS_NOTIFY_READY";

pub fn mount(
    meta: Option<String>,
    token_file: Option<PathBuf>,
    mountpoint: &Path,
    background: bool,
    options: &[String],
    log: Option<PathBuf>,
    argv: &[String],
) -> Result<()> {
    let opts = MountOptions::parse(options.iter().map(String::as_str))?;
    check_mountpoint(mountpoint)?;
    let meta = match meta {
        Some(meta) => meta,
        None => embedded_default()?,
    };
    volume::check_meta_url(&meta, opts.commit)?;
    if background {
        return spawn_background(mountpoint, log, argv);
    }
    let token_file = token_file.or_else(|| opts.token_file.clone());
    serve(&MetaAccess::new(Some(meta), token_file), mountpoint, opts)
}

/// The embedded default volume, formatted on first use.
fn embedded_default() -> Result<String> {
    let meta = volume::default_meta_url();
    if !volume::is_formatted(&meta)? {
        let spec = FormatSpec {
            name: "elasticfs".into(),
            storage: volume::default_storage_url(),
            block_size: 4 << 20,
            inline_threshold: 64 << 10,
            throughput: Default::default(),
        };
        volume::format(&MetaAccess::new(Some(meta.clone()), None), &spec)?;
        eprintln!("formatted the default file system at {meta} (chunks in {})", spec.storage);
    }
    Ok(meta)
}

fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let meta = std::fs::metadata(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "mount point {} does not exist: create it first (mkdir -p {})",
            mountpoint.display(),
            mountpoint.display()
        ),
        _ => anyhow::anyhow!("mount point {}: {e}", mountpoint.display()),
    })?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if let Some(mounted) = mounted_at(mountpoint)? {
        bail!(
            "{} is already a mount point ({mounted}): mounting over it would hide that file system; \
             unmount it first (elasticfs umount {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let mut entries =
        std::fs::read_dir(mountpoint).with_context(|| format!("reading {}", mountpoint.display()))?;
    if entries.next().is_some() {
        bail!(
            "mount point {} is not empty: mounting over it would hide its files; choose an empty directory",
            mountpoint.display()
        );
    }
    Ok(())
}

/// What is mounted at `dir` ("TYPE SOURCE"), if anything, from /proc/self/mountinfo.
pub(crate) fn mounted_at(dir: &Path) -> Result<Option<String>> {
    let dir = std::path::absolute(dir)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return Ok(None) };
    Ok(table.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS
        let fields: Vec<&str> = line.split(' ').collect();
        let at = unescape_mountinfo(fields.get(4)?);
        let rest = line.split_once(" - ")?.1;
        let mut described = rest.split(' ');
        let (kind, source) = (described.next()?, described.next()?);
        (Path::new(&at) == dir).then(|| format!("{kind} {}", unescape_mountinfo(source)))
    }))
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the mount in this process until it is unmounted.
fn serve(access: &MetaAccess, mountpoint: &Path, opts: MountOptions) -> Result<()> {
    let fs = Arc::new(volume::open_filesystem(access, mountpoint, &opts)?);
    let page_fill = PageFillMetrics::default();
    let metrics = opts
        .metrics
        .as_deref()
        .map(|addr| {
            let mut registry = client_registry(&fs);
            page_fill.register(&mut registry);
            metrics_endpoint::serve(addr, registry)
        })
        .transpose()?;
    let status = StatusWriter::start(fs.clone(), &access.url, mountpoint)?;
    let gc = crate::collect::start_client_gc(&fs, access, &opts)?;
    let pid_file = PidFile::create(mountpoint)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("elasticfs".into()),
        MountOption::DefaultPermissions,
        if opts.read_only { MountOption::RO } else { MountOption::RW },
    ];
    config.mount_options.extend(opts.kernel_flags.iter().map(|f| MountOption::CUSTOM(f.clone())));
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let (adapter, notifier) =
        FuseAdapter::new(fs.clone(), opts.engine.attr_cache, opts.entry_ttl, page_fill, opts.threads);
    let mut session = fuser::Session::new(adapter, mountpoint, &config).with_context(|| {
        format!("mounting {} (is /dev/fuse available, and are you root?)", mountpoint.display())
    })?;
    let _ = notifier.set(session.notifier());
    info!(mountpoint = %mountpoint.display(), meta = access.url, "mounted");
    if std::env::var_os(READY_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        // SAFETY: closing our stdout, which nothing else uses from here on, so that the waiting
        // parent sees EOF after "ready".
        unsafe { libc::close(1) };
    }
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            info!(signal, "unmounting on signal");
            if let Err(e) = unmounter.unmount() {
                warn!("unmount on signal failed: {e}");
            }
        }
    });
    session.run().context("serving the FUSE session")?;
    drop(gc);
    drop(metrics);
    if let Some(status) = status {
        status.stop();
    }
    fs.shutdown()?;
    // The session (run consumed it) is gone; with our reference the engine and its lock go too.
    drop(fs);
    drop(pid_file);
    info!("unmounted");
    Ok(())
}

/// Starts this same mount in a child process and returns once it is ready (or has failed).
fn spawn_background(mountpoint: &Path, log: Option<PathBuf>, argv: &[String]) -> Result<()> {
    let log = log.unwrap_or_else(|| volume::default_home().join("logs").join("mount.log"));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening log {}", log.display()))?;
    // Where this mount's lines start: other mounts may share the log.
    let ours_from = log_file.metadata().map_or(0, |m| m.len());
    let args: Vec<String> =
        argv.iter().skip(1).filter(|a| *a != "-d" && *a != "--background").cloned().collect();
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(&args).env(READY_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    // SAFETY: setsid is async-signal-safe; detaching from the terminal's session means a
    // closing terminal does not take the mount with it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background mount")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() == "ready" {
        println!(
            "mounted {} in the background (pid {}, log {})",
            mountpoint.display(),
            child.id(),
            log.display()
        );
        return Ok(());
    }
    let status = child.wait()?;
    let written = std::fs::read(&log).unwrap_or_default();
    let ours = String::from_utf8_lossy(written.get(ours_from as usize..).unwrap_or_default()).into_owned();
    // Its own error first (the line the failing process ends with), then what it logged before.
    let (error, logged): (Vec<&str>, Vec<&str>) = ours.lines().partition(|l| l.starts_with("elasticfs: "));
    let error = error.last().map_or("(no error message)", |l| l.trim_start_matches("elasticfs: "));
    let logged: Vec<&str> = logged.into_iter().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    if logged.is_empty() {
        bail!("{error}");
    }
    bail!(
        "{error}\n(the background mount exited with {status}; its log {} says:)\n{}",
        log.display(),
        logged.join("\n")
    )
}

pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let c_path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
        return wait_unmounted(mountpoint);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) => {
            // Not root: the setuid helper unmounts FUSE mounts for their owner.
            let status = Command::new("fusermount3").arg("-u").arg(mountpoint).status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => bail!("unmounting {} needs root (or fusermount3 from the fuse3 package)", mountpoint.display()),
            }
        }
        Some(libc::EBUSY) => bail!(
            "{} is busy: close the files open in it (see `fuser -m {}`), or detach it now with `elasticfs umount --lazy`",
            mountpoint.display(),
            mountpoint.display()
        ),
        Some(libc::EINVAL) => bail!("{} is not a mount point", mountpoint.display()),
        _ => bail!("unmounting {}: {err}", mountpoint.display()),
    }
}

/// umount(2) returns once the kernel has detached the mount; the serving process then commits
/// and releases the metadata store. Wait for it to exit, so that the file system can be mounted
/// again (or checked) as soon as this returns.
fn wait_unmounted(mountpoint: &Path) -> Result<()> {
    let Some(pid) = PidFile::read(mountpoint) else {
        return Ok(());
    };
    for _ in 0..600 {
        if !process_alive(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} is unmounted, but its process {pid} is still committing after 30 s", mountpoint.display())
}

/// Whether `pid` is running (a zombie, exited but not yet reaped by its parent, is not).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Records which process serves a mount point, for `elasticfs umount` to wait on.
struct PidFile(PathBuf);

impl PidFile {
    fn path(mountpoint: &Path) -> PathBuf {
        let canonical = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
        let key = canonical.to_string_lossy().replace('/', "_");
        // SAFETY: geteuid has no preconditions.
        let dir = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/run/elasticfs")
        } else {
            volume::default_home().join("run")
        };
        dir.join(format!("{key}.pid"))
    }

    fn create(mountpoint: &Path) -> Result<Self> {
        let path = Self::path(mountpoint);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, std::process::id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile(path))
    }

    fn read(mountpoint: &Path) -> Option<u32> {
        std::fs::read_to_string(Self::path(mountpoint)).ok()?.trim().parse().ok()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
