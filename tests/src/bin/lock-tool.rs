//! A helper process for the lock tests (locks belong to processes, so each contender must be
//! one):
//!
//! * `lock-tool count flock|fcntl FILE N`: N times, lock FILE (waiting), add one to the number
//!   in it, unlock.
//! * `lock-tool hold FILE`: take a write lock without waiting, print `locked`, sleep until
//!   killed; print `busy` and exit 1 if it is held by another.
//! * `lock-tool test FILE`: F_GETLK for a write lock on the whole file; print `unlocked` or
//!   `held TYPE START LEN PID`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

fn flock(file: &File, op: i32) {
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
}

/// F_SETLK(W)/F_GETLK on the whole file; returns false on EAGAIN.
fn fcntl_lock(file: &File, cmd: i32, typ: i32) -> Result<libc::flock, std::io::Error> {
    // SAFETY: zeroed flock is a valid starting value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = typ as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    // SAFETY: a valid descriptor and a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut lock) };
    if rc == 0 {
        Ok(lock)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn increment(file: &mut File) {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut text).unwrap();
    let value: u64 = text.trim().parse().unwrap_or(0);
    file.set_len(0).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    write!(file, "{}", value + 1).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let open = |path: &str| OpenOptions::new().read(true).write(true).open(path).expect("open");
    match args.get(1).map(String::as_str) {
        Some("count") => {
            let (kind, path, n) = (&args[2], &args[3], args[4].parse::<u32>().unwrap());
            for _ in 0..n {
                // A fresh open each time, as a short-lived process would.
                let mut file = open(path);
                match kind.as_str() {
                    "flock" => {
                        flock(&file, libc::LOCK_EX);
                        increment(&mut file);
                        file.sync_all().unwrap();
                        flock(&file, libc::LOCK_UN);
                    }
                    "fcntl" => {
                        fcntl_lock(&file, libc::F_SETLKW, libc::F_WRLCK).expect("F_SETLKW");
                        increment(&mut file);
                        fcntl_lock(&file, libc::F_SETLK, libc::F_UNLCK).expect("unlock");
                    }
                    other => panic!("unknown lock kind {other}"),
                }
            }
        }
        Some("hold") => {
            let file = open(&args[2]);
            match fcntl_lock(&file, libc::F_SETLK, libc::F_WRLCK) {
                Ok(_) => println!("locked"),
                Err(e)
                    if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EACCES) =>
                {
                    println!("busy");
                    std::process::exit(1);
                }
                Err(e) => panic!("F_SETLK: {e}"),
            }
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("test") => {
            let file = open(&args[2]);
            let lock = fcntl_lock(&file, libc::F_GETLK, libc::F_WRLCK).expect("F_GETLK");
            if lock.l_type == libc::F_UNLCK as i16 {
                println!("unlocked");
            } else {
                let typ = if lock.l_type == libc::F_WRLCK as i16 { "write" } else { "read" };
                println!("held {typ} {} {} {}", lock.l_start, lock.l_len, lock.l_pid);
            }
        }
        _ => {
            eprintln!("usage: lock-tool count flock|fcntl FILE N | hold FILE | test FILE");
            std::process::exit(2);
        }
    }
}
