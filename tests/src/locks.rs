//! The `lock-tool` helper: takes, tests and holds `flock`/`fcntl` locks from a process of its
//! own, so that tests see locks across mounts as separate processes do.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::built_bin;

pub fn lock_tool(args: &[&str]) -> Command {
    let mut command = Command::new(built_bin("lock-tool"));
    command.args(args);
    command
}

pub fn lock_state(file: &Path) -> String {
    let out = lock_tool(&["test", file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "lock-tool test: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts `lock-tool hold FILE`; returns it once it holds the lock.
pub fn hold(file: &Path) -> Child {
    let mut child = lock_tool(&["hold", file.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    child
}
