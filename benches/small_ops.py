#!/usr/bin/env python3
"""Small operations from one thread on a fresh embedded mount, each beside its floor: one
fdatasync of the metadata disk plus the FUSE requests the operation needs (issue 17, item 3:
each operation within 1.3x of that floor).

  python3 benches/small_ops.py [--bin target/release/elasticfs] [--options commit=5s]
                               [--n 2000] [--workdir /tmp/small-ops]

The FUSE requests an operation needs are counted by strace on the mount process (every reply
is one writev to /dev/fuse) over 100 more operations of each kind. One request's cost is
measured as a getxattr of a missing attribute (a request the kernel always forwards, answered
from one metadata read); one fdatasync as a direct (O_DIRECT) write of the page a 128-byte
record ends in and an fdatasync of a file in the metadata's directory, over zeros the file
already holds (what the journal's commit does: the cheapest durable write there is, since the
file's size does not change). The workdir is removed at the end.
"""
import argparse
import errno
import mmap
import os
import re
import shutil
import signal
import subprocess
import time


COUNTED = 100
PAGE = 4096
#: Where the counting pass's names start, apart from the timed pass's.
COUNTING = 1_000_000


def replies(pid, run):
    """FUSE replies (writev calls) of process `pid` while `run()` runs."""
    out = f"/tmp/small-ops-strace.{os.getpid()}"
    strace = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=writev", "-o", out, "-p", str(pid)],
                              stderr=subprocess.PIPE, text=True)
    for line in strace.stderr:  # strace says when it has attached to every thread
        if "attached" in line:
            break
    time.sleep(0.5)
    run()
    strace.send_signal(signal.SIGINT)
    strace.wait()
    with open(out) as f:
        summary = f.read()
    os.unlink(out)
    m = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?writev$", summary, re.M)
    return int(m.group(1)) if m else 0


def per_call_us(n, call):
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - start) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/elasticfs")
    ap.add_argument("--options", default="")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workdir", default="/tmp/small-ops")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    mnt, vol = f"{a.workdir}/mnt", f"{a.workdir}/vol"
    os.makedirs(mnt)
    meta = f"sled://{vol}/meta"
    subprocess.run([a.bin, "format", "--meta", meta, "--storage", "file", "--bucket", f"{vol}/chunks"],
                   check=True, stdout=subprocess.DEVNULL)
    options = ["-o", a.options] if a.options else []
    out = subprocess.run([a.bin, "mount", "--meta", meta, mnt, "-d", *options, "--log", f"{a.workdir}/mount.log"],
                         check=True, capture_output=True, text=True).stdout
    pid = int(re.search(r"pid (\d+)", out).group(1))
    try:
        base, n, buf = f"{mnt}/ops", a.n, b"x" * 4096
        os.mkdir(base)

        def create_close(i):
            os.close(os.open(f"{base}/c{i}", os.O_CREAT | os.O_WRONLY, 0o644))

        def create_write_close(i):
            fd = os.open(f"{base}/w{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, buf)
            os.close(fd)

        phases = [
            ("create+close", create_close),
            ("create+write 4K+close", create_write_close),
            ("mkdir", lambda i: os.mkdir(f"{base}/d{i}")),
            ("rename", lambda i: os.rename(f"{base}/c{i}", f"{base}/r{i}")),
            ("unlink", lambda i: os.unlink(f"{base}/r{i}")),
            ("rmdir", lambda i: os.rmdir(f"{base}/d{i}")),
        ]
        measured = []
        for name, call in phases:
            us = per_call_us(n, call)
            counted = replies(pid, lambda: [call(COUNTING + i) for i in range(COUNTED)])
            measured.append((name, us, counted / COUNTED))

        probe = f"{base}/w0"

        def missing_xattr(_):
            try:
                os.getxattr(probe, "user.absent")
            except OSError as e:
                assert e.errno == errno.ENODATA, e

        request_us = per_call_us(n, missing_xattr)
        probe = f"{vol}/meta/fdatasync-probe"
        with open(probe, "wb") as f:
            f.write(bytes(128 * n + 2 * PAGE))
            os.fsync(f.fileno())
        log = os.open(probe, os.O_WRONLY | os.O_DIRECT)
        page = mmap.mmap(-1, PAGE)  # page-aligned, as direct I/O wants
        page.write(b"y" * PAGE)
        fdatasync_us = per_call_us(n, lambda i: (os.pwritev(log, [page], i * 128 // PAGE * PAGE),
                                                 os.fdatasync(log)))
        os.close(log)
        os.unlink(f"{vol}/meta/fdatasync-probe")
    finally:
        subprocess.run(["umount", mnt], check=False)
        time.sleep(0.5)
        shutil.rmtree(a.workdir, ignore_errors=True)

    print(f"options: {a.options or '(defaults)'}; {n} operations each, one thread")
    print(f"one FUSE request (getxattr of a missing attribute): {request_us:.1f} us; "
          f"one fdatasync of the metadata disk: {fdatasync_us:.1f} us")
    print(f"{'operation':24s} {'us/op':>8s} {'requests':>9s} {'floor us':>9s} {'/floor':>7s}")
    for name, us, requests in measured:
        floor = fdatasync_us + requests * request_us
        print(f"{name:24s} {us:8.1f} {requests:9.2f} {floor:9.1f} {us / floor:7.2f}")


if __name__ == "__main__":
    main()
