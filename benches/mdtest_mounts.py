#!/usr/bin/env python3
"""mdtest from several mounts at once: elasticfs through `meta serve` beside JuiceFS + Redis,
or (--meta etcd) both on one 3-member etcd cluster.

    python3 benches/mdtest_mounts.py [--meta service|etcd] [--mounts 4] [--files 5000] [--rounds 2] [--out FILE.json]

fsbench mounts one client per target; this driver mounts --mounts clients of one file system
per target, all sharing one metadata server (our `meta serve`, or redis-server for JuiceFS;
with --meta etcd, one 3-member etcd cluster on 127.0.0.1 for both, each file system under a
name of its own) and one SeaweedFS S3 server, started once for the whole run. Process r creates, stats and
removes its own --files empty files in one directory that every mount shares, through mount r;
each phase is timed from a barrier that all processes pass to the moment the last one ends.
As in fsbench, the kernel's caches are dropped before stat and remove.

Targets alternate within each round so that neither always goes first. It reuses fsbench's
servers and tools (../shared/bench/fsbench.py, set FSBENCH_DIR to move it) and needs a release
build: `cargo build --release -p elasticfs`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("FSBENCH_DIR", str(REPO.parent / "shared" / "bench")))
import fsbench  # noqa: E402  (path set just above)

ELASTICFS = REPO / "target" / "release" / "elasticfs"
PHASES = ("create", "stat", "remove")


class Target:
    """One file system mounted N times. Subclasses start its metadata server and mount it."""
    name = ""

    def __init__(self, workdir: Path, server: fsbench.SeaweedServer, mounts: int, round_no: int) -> None:
        self.dir = workdir / f"{self.name}-{round_no}"
        self.server, self.bucket = server, f"mdtest-{self.name}-{round_no}"
        self.mnts = [self.dir / f"mnt{i}" for i in range(mounts)]
        self.logs: list[Path] = []

    def env(self) -> dict[str, str]:
        return fsbench.client_env(AWS_ACCESS_KEY_ID=fsbench.S3_ACCESS_KEY,
                                  AWS_SECRET_ACCESS_KEY=fsbench.S3_SECRET_KEY, AWS_REGION=fsbench.S3_REGION)

    def up(self) -> None:
        self.dir.mkdir(parents=True)
        self.server.client().create_bucket(self.bucket)
        self.start_metadata()
        for i, mnt in enumerate(self.mnts):
            mnt.mkdir()
            fsbench.run_cmd(self.mount_argv(i), timeout=fsbench.MOUNT_TIMEOUT_S, env=self.env())
            deadline = time.monotonic() + fsbench.MOUNT_TIMEOUT_S
            while not fsbench.is_mounted(mnt):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: {mnt} not mounted")
                time.sleep(0.1)

    def down(self) -> None:
        for mnt in self.mnts:
            if fsbench.is_mounted(mnt):
                fsbench.run_cmd(self.umount_argv(mnt), timeout=fsbench.UNMOUNT_TIMEOUT_S, check=False)
            if fsbench.is_mounted(mnt):
                fsbench.run_cmd(["umount", "-l", str(mnt)], check=False)
        self.stop_metadata()

    def start_metadata(self) -> None:
        raise NotImplementedError

    def stop_metadata(self) -> None:
        raise NotImplementedError

    def mount_argv(self, i: int) -> list[str]:
        raise NotImplementedError

    def umount_argv(self, mnt: Path) -> list[str]:
        raise NotImplementedError


class Elasticfs(Target):
    name = "elasticfs"

    def start_metadata(self) -> None:
        out = self.dir / "serve.out"
        with open(out, "wb") as stdout, open(self.dir / "serve.log", "wb") as stderr:
            self.serve = subprocess.Popen([str(ELASTICFS), "meta", "serve", "--db", str(self.dir / "meta"),
                                           "--listen", "127.0.0.1:0"], stdout=stdout, stderr=stderr,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while "listening on" not in out.read_text():
            if self.serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"meta serve did not start: {fsbench.tail(self.dir / 'serve.log')}")
            time.sleep(0.05)
        self.meta = "tcp://" + out.read_text().split("listening on", 1)[1].split()[0]
        # elastic: metered by the governor, under a ceiling (10 GiB/s) above this machine.
        fsbench.run_cmd([str(ELASTICFS), "format", "--meta", self.meta, "--storage", "s3",
                         "--bucket", f"{self.server.endpoint}/{self.bucket}", "--throughput", "elastic"],
                        env=self.env())

    def stop_metadata(self) -> None:
        self.serve.terminate()
        self.serve.wait(timeout=30)

    def mount_argv(self, i: int) -> list[str]:
        return [str(ELASTICFS), "mount", "--meta", self.meta, "-d", "--log", str(self.dir / f"mount{i}.log"),
                "-o", f"cache-dir={self.dir / f'cache{i}'}", str(self.mnts[i])]

    def umount_argv(self, mnt: Path) -> list[str]:
        return [str(ELASTICFS), "umount", str(mnt)]


class EtcdCluster:
    """Three etcd members on 127.0.0.1 (Debian's etcd-server), as the tests start them."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "etcd"
        self.ports = [(fsbench.free_port(), fsbench.free_port()) for _ in range(3)]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        peers = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(self.ports))
        for i, (client, peer) in enumerate(self.ports):
            with open(self.dir / f"m{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    ["etcd", "--name", f"m{i}", "--data-dir", str(self.dir / f"m{i}"),
                     "--listen-client-urls", f"http://127.0.0.1:{client}",
                     "--advertise-client-urls", f"http://127.0.0.1:{client}",
                     "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-cluster", peers, "--initial-cluster-state", "new",
                     "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
                     "--quota-backend-bytes", str(8 << 30)],
                    stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while subprocess.run(["etcdctl", "--endpoints", self.endpoints(), "endpoint", "health"],
                             capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the etcd cluster did not become healthy")
            time.sleep(0.2)

    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{client}" for client, _ in self.ports)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


class ElasticfsEtcd(Elasticfs):
    name = "elasticfs-etcd"

    def __init__(self, workdir: Path, server: fsbench.SeaweedServer, mounts: int, round_no: int,
                 etcd: EtcdCluster) -> None:
        super().__init__(workdir, server, mounts, round_no)
        self.meta = f"etcd://{etcd.endpoints()}/mdtest{round_no}"

    def start_metadata(self) -> None:
        fsbench.run_cmd([str(ELASTICFS), "format", "--meta", self.meta, "--storage", "s3",
                         "--bucket", f"{self.server.endpoint}/{self.bucket}", "--throughput", "elastic"],
                        env=self.env())

    def stop_metadata(self) -> None:
        pass


class JuiceFSRedis(Target):
    name = "juicefs-redis"

    def __init__(self, workdir: Path, server: fsbench.SeaweedServer, mounts: int, round_no: int,
                 juicefs: Path) -> None:
        super().__init__(workdir, server, mounts, round_no)
        self.juicefs = juicefs

    def start_metadata(self) -> None:
        self.redis = fsbench.RedisServer(self.dir / "redis", self.dir / "redis.log")
        self.redis.start()
        self.meta = f"redis://127.0.0.1:{self.redis.port}/1"
        fsbench.run_cmd([str(self.juicefs), "format", "--storage", "s3",
                         "--bucket", f"{self.server.endpoint}/{self.bucket}",
                         "--access-key", fsbench.S3_ACCESS_KEY, "--secret-key", fsbench.S3_SECRET_KEY,
                         self.meta, "mdtest"], env=self.env())

    def stop_metadata(self) -> None:
        self.redis.stop()

    def mount_argv(self, i: int) -> list[str]:
        return [str(self.juicefs), "mount", "-d", "--no-usage-report", "--cache-dir", str(self.dir / f"cache{i}"),
                "--log", str(self.dir / f"mount{i}.log"), self.meta, str(self.mnts[i])]

    def umount_argv(self, mnt: Path) -> list[str]:
        return [str(self.juicefs), "umount", str(mnt)]


class JuiceFSEtcd(JuiceFSRedis):
    name = "juicefs-etcd"

    def __init__(self, workdir: Path, server: fsbench.SeaweedServer, mounts: int, round_no: int,
                 juicefs: Path, etcd: EtcdCluster) -> None:
        super().__init__(workdir, server, mounts, round_no, juicefs)
        self.meta = f"etcd://{etcd.endpoints()}/jfs{round_no}"

    def start_metadata(self) -> None:
        fsbench.run_cmd([str(self.juicefs), "format", "--storage", "s3",
                         "--bucket", f"{self.server.endpoint}/{self.bucket}",
                         "--access-key", fsbench.S3_ACCESS_KEY, "--secret-key", fsbench.S3_SECRET_KEY,
                         self.meta, "mdtest"], env=self.env())

    def stop_metadata(self) -> None:
        pass


def rank(paths: list[Path], action: str, barrier: threading.Barrier) -> None:
    try:
        barrier.wait()
        for path in paths:
            fsbench.MDTEST_ACTIONS[action](path)
        barrier.wait()
    except BaseException:
        barrier.abort()
        raise


def mdtest(target: Target, files: int) -> dict[str, float]:
    """ops/s of each phase, with process r working through mount r."""
    shared = target.mnts[0] / "mdtest"
    shared.mkdir()
    ctx = multiprocessing.get_context("fork")
    rates = {}
    for action in PHASES:
        if action != "create":
            fsbench.drop_caches()  # as fsbench does: stat and remove start from cold kernel caches
        barrier = ctx.Barrier(len(target.mnts) + 1)
        procs = [ctx.Process(target=rank, args=(
                     [mnt / "mdtest" / f"r{r}.{i:06d}" for i in range(files)], action, barrier))
                 for r, mnt in enumerate(target.mnts)]
        for proc in procs:
            proc.start()
        barrier.wait()
        start = time.perf_counter()
        barrier.wait()
        seconds = time.perf_counter() - start
        for proc in procs:
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"{target.name}: an mdtest {action} process failed")
        rates[action] = len(procs) * files / seconds
        fsbench.log(f"{target.name}: {action} {rates[action]:.0f} ops/s")
    shared.rmdir()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta", choices=("service", "etcd"), default="service")
    parser.add_argument("--mounts", type=int, default=4)
    parser.add_argument("--files", type=int, default=5000, help="files per process and phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mdtest-mounts"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not ELASTICFS.exists():
        sys.exit(f"{ELASTICFS} is missing: run `cargo build --release -p elasticfs` first")
    tools = fsbench.ensure_tools(Path("/tmp/fsbench"))
    fsbench.wipe_dir(args.workdir)
    server = fsbench.SeaweedServer(tools.weed, args.workdir / "seaweed", args.workdir / "seaweed.log")
    server.start()
    etcd = EtcdCluster(args.workdir) if args.meta == "etcd" else None
    if etcd:
        etcd.start()
    results: list[dict[str, object]] = []
    try:
        for round_no in range(args.rounds):
            if etcd:
                targets = [ElasticfsEtcd(args.workdir, server, args.mounts, round_no, etcd),
                           JuiceFSEtcd(args.workdir, server, args.mounts, round_no, tools.juicefs, etcd)]
            else:
                targets = [Elasticfs(args.workdir, server, args.mounts, round_no),
                           JuiceFSRedis(args.workdir, server, args.mounts, round_no, tools.juicefs)]
            if round_no % 2:
                targets.reverse()
            figures = {}
            for target in targets:
                try:
                    target.up()
                    figures[target.name] = mdtest(target, args.files)
                finally:
                    target.down()
            ours = next(t.name for t in targets if t.name.startswith("elasticfs"))
            theirs = next(t.name for t in targets if t.name.startswith("juicefs"))
            ratios = {a: figures[ours][a] / figures[theirs][a] for a in PHASES}
            fsbench.log(f"round {round_no}: {ours} / {theirs} = "
                        + ", ".join(f"{a} {r:.2f}x" for a, r in ratios.items()))
            results.append({"order": [t.name for t in targets], "ops_per_s": figures, "ratio": ratios})
    finally:
        server.stop()
        if etcd:
            etcd.stop()
    report = {"meta": args.meta, "mounts": args.mounts, "files_per_process": args.files, "rounds": results}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
