use std::io::Write;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    bound_allocator_memory();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk under a redirected stderr) loses lines; it
        // must not take the process down by reporting that on the same stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut argv: Vec<String> = std::env::args().collect();
    // Called by mount(8) as /sbin/mount.elasticfs.
    if argv[0].rsplit('/').next().is_some_and(|n| n.starts_with("mount.elasticfs")) {
        argv = match elasticfs_cli::cli::mount_helper_args(&argv[1..]) {
            Ok(args) => args,
            Err(e) => exit_with(e),
        };
    }
    let cli = elasticfs_cli::cli::Cli::parse_from(&argv);
    if let Err(e) = elasticfs_cli::cli::run(cli, &argv) {
        exit_with(e);
    }
}

/// ELASTICFS_LOG (default `info`). fuser warns "Failed to umount filesystem" whenever the mount
/// was detached by umount(8) rather than by itself, which is every clean unmount (its own source
/// says this is not necessarily an error): that one target is quiet unless asked for.
fn log_filter() -> EnvFilter {
    let wanted = std::env::var("ELASTICFS_LOG").unwrap_or_else(|_| "info".into());
    let directives = if wanted.contains("fuser") { wanted } else { format!("{wanted},fuser::session=error") };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,fuser::session=error"))
}

fn exit_with(e: anyhow::Error) -> ! {
    // Not eprintln!: it panics when stderr cannot be written.
    let _ = writeln!(std::io::stderr(), "elasticfs: {e:#}");
    std::process::exit(1)
}

/// glibc raises its mmap threshold each time a large block is freed, after which 4 MiB block
/// buffers come from the heap arenas and fragment them: a 2 GiB write then left the process
/// hundreds of MiB above its cache budget. A fixed threshold keeps block buffers in their own
/// mappings, returned to the system when freed.
fn bound_allocator_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
