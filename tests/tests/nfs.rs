//! The NFS gateway over the real wire protocol: every procedure, caller ids and permissions,
//! export rules, READDIR paging of a large directory, COMMIT durability across a gateway
//! kill, malformed input, interop with FUSE mounts, and libnfs-utils copying a large file (over
//! NFSv3 and NFSv4.0). The NFSv4-only tests are in nfs4.rs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use elasticfs_tests::nfs::*;
use elasticfs_tests::nfs4::{Op, Stable, Wire};
use elasticfs_tests::posix_suite::hash_file;
use elasticfs_tests::{
    free_disk_bytes, free_port, fuse_available, pattern, run_ok, scrape, MetaService, S3Server, Volume,
};
use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_stat, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{MountError, Nfs3Client, RpcError};

fn status<T: std::fmt::Debug, E: std::fmt::Debug>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(ok) => panic!("expected an error, got {ok:?}"),
        Nfs3Result::Err((s, _)) => s,
    }
}

fn set(attrs: sattr3) -> SETATTR3args {
    SETATTR3args { object: nfs_fh3::default(), new_attributes: attrs, guard: sattrguard3::None }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_procedure_over_the_wire() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 1000, 100).await;
    nfs.null().await.unwrap();

    let info = nfs.fsinfo(&FSINFO3args { fsroot: root.clone() }).await.unwrap().unwrap();
    assert_eq!((info.rtmax, info.wtmax), (1 << 20, 1 << 20));
    assert!(info.properties & FSF3_LINK != 0 && info.properties & FSF3_SYMLINK != 0);
    let conf = nfs.pathconf(&PATHCONF3args { object: root.clone() }).await.unwrap().unwrap();
    assert_eq!(conf.name_max, 255);
    let used = |s: &FSSTAT3resok| s.tbytes - s.fbytes;
    let before = nfs.fsstat(&FSSTAT3args { fsroot: root.clone() }).await.unwrap().unwrap();

    // The root is root's: uid 1000 makes its own directory there as root (squash none).
    let (mut root_nfs, _) = client(gw.port, 0, 0).await;
    let how = |mode| MKDIR3args {
        where_: at(&root, "home"),
        attributes: sattr3 { mode: set_mode3::Some(mode), ..Default::default() },
    };
    let home = made(root_nfs.mkdir(&how(0o777)).await.unwrap().unwrap().obj);

    // CREATE: unchecked, guarded, exclusive (a retransmission finds its own file).
    let file = create(&mut nfs, &home, "a", 0o640).await.unwrap();
    let attr = getattr(&mut nfs, &file).await.unwrap();
    assert_eq!((attr.uid, attr.gid, attr.mode, attr.type_), (1000, 100, 0o640, ftype3::NF3REG));
    let guarded = createhow3::GUARDED(sattr3::default());
    assert_eq!(
        status(nfs.create(&CREATE3args { where_: at(&home, "a"), how: guarded }).await.unwrap()),
        nfsstat3::NFS3ERR_EXIST
    );
    let exclusive =
        |v: u8| CREATE3args { where_: at(&home, "x"), how: createhow3::EXCLUSIVE(createverf3([v; 8])) };
    let first = made(nfs.create(&exclusive(7)).await.unwrap().unwrap().obj);
    let again = made(nfs.create(&exclusive(7)).await.unwrap().unwrap().obj);
    assert_eq!(first, again, "a retransmitted exclusive CREATE must find its file");
    assert_eq!(status(nfs.create(&exclusive(8)).await.unwrap()), nfsstat3::NFS3ERR_EXIST);

    // WRITE unstable, COMMIT with the same verifier, READ it back.
    let data = pattern(11, 3 << 20 | 12345);
    let verf = write(&mut nfs, &file, 0, &data, stable_how::UNSTABLE).await.unwrap();
    assert_eq!(commit(&mut nfs, &file).await.unwrap(), verf);
    assert_eq!(read_all(&mut nfs, &file, 1 << 20).await.unwrap(), data);
    assert_eq!(read_all(&mut nfs, &file, 100_000).await.unwrap(), data, "unaligned READs");
    // A FILE_SYNC write is answered FILE_SYNC (checked in `write`).
    write(&mut nfs, &file, data.len() as u64, b"tail", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.unwrap().size, data.len() as u64 + 4);
    let after = nfs.fsstat(&FSSTAT3args { fsroot: root.clone() }).await.unwrap().unwrap();
    assert!(used(&after) >= used(&before) + data.len() as u64, "FSSTAT does not count the data");
    // READs across the 4 MiB block boundary and through a hole: data and zeros, in order, in
    // replies of odd lengths (the data is sent as the engine's pieces, then padded).
    write(&mut nfs, &file, 5 << 20, b"past a hole", stable_how::FILE_SYNC).await.unwrap();
    let mut sparse = [data.as_slice(), b"tail"].concat();
    sparse.resize(5 << 20, 0);
    sparse.extend_from_slice(b"past a hole");
    assert!(read_all(&mut nfs, &file, 1_000_001).await.unwrap() == sparse, "READs through a hole differ");

    // SETATTR: size, mode, times; a failed guard; chown needs root.
    let mut req =
        set(sattr3 { size: set_size3::Some(1000), mode: set_mode3::Some(0o600), ..Default::default() });
    req.object = file.clone();
    nfs.setattr(&req).await.unwrap().unwrap();
    let attr = getattr(&mut nfs, &file).await.unwrap();
    assert_eq!((attr.size, attr.mode), (1000, 0o600));
    assert_eq!(read_all(&mut nfs, &file, 4096).await.unwrap(), data[..1000]);
    let when = nfstime3 { seconds: 1_600_000_000, nseconds: 5 };
    let mut req = set(sattr3 { mtime: set_mtime::SET_TO_CLIENT_TIME(when), ..Default::default() });
    req.object = file.clone();
    nfs.setattr(&req).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.unwrap().mtime, when);
    let mut guarded = set(sattr3 { mode: set_mode3::Some(0o644), ..Default::default() });
    guarded.object = file.clone();
    guarded.guard = sattrguard3::Some(nfstime3 { seconds: 1, nseconds: 0 });
    assert_eq!(status(nfs.setattr(&guarded).await.unwrap()), nfsstat3::NFS3ERR_NOT_SYNC);
    let mut chown = set(sattr3 { uid: set_uid3::Some(2000), ..Default::default() });
    chown.object = file.clone();
    assert_eq!(status(nfs.setattr(&chown).await.unwrap()), nfsstat3::NFS3ERR_PERM);
    root_nfs.setattr(&chown).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.unwrap().uid, 2000);
    chown.new_attributes.uid = set_uid3::Some(1000);
    root_nfs.setattr(&chown).await.unwrap().unwrap();

    // MKDIR, SYMLINK/READLINK, LINK, RENAME, MKNOD, ACCESS, LOOKUP.
    let dir = made(
        nfs.mkdir(&MKDIR3args { where_: at(&home, "d"), attributes: sattr3::default() })
            .await
            .unwrap()
            .unwrap()
            .obj,
    );
    let link = SYMLINK3args {
        where_: at(&dir, "l"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"../a")),
        },
    };
    let symlink = made(nfs.symlink(&link).await.unwrap().unwrap().obj);
    let target = nfs.readlink(&READLINK3args { symlink: symlink.clone() }).await.unwrap().unwrap();
    assert_eq!(target.data.as_ref(), b"../a");
    nfs.link(&LINK3args { file: file.clone(), link: at(&dir, "a2") }).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.unwrap().nlink, 2);
    let rename = RENAME3args { from: at(&home, "a"), to: at(&dir, "b") };
    nfs.rename(&rename).await.unwrap().unwrap();
    assert_eq!(lookup(&mut nfs, &home, "a").await, Err(nfsstat3::NFS3ERR_NOENT));
    assert_eq!(lookup(&mut nfs, &dir, "b").await.unwrap(), file, "a handle names the file, not the path");
    assert_eq!(lookup(&mut nfs, &dir, "..").await.unwrap(), home);
    let fifo = MKNOD3args { where_: at(&dir, "p"), what: mknoddata3::NF3FIFO(sattr3::default()) };
    let fifo = made(nfs.mknod(&fifo).await.unwrap().unwrap().obj);
    assert_eq!(getattr(&mut nfs, &fifo).await.unwrap().type_, ftype3::NF3FIFO);
    let device = MKNOD3args {
        where_: at(&dir, "dev"),
        what: mknoddata3::NF3CHR(devicedata3 {
            dev_attributes: sattr3::default(),
            spec: specdata3 { specdata1: 1, specdata2: 3 },
        }),
    };
    assert_eq!(status(nfs.mknod(&device).await.unwrap()), nfsstat3::NFS3ERR_PERM, "only root makes devices");
    let access = nfs.access(&ACCESS3args { object: file.clone(), access: 0x3f }).await.unwrap().unwrap();
    assert_eq!(access.access, ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND);
    let long = "n".repeat(256);
    assert_eq!(create(&mut nfs, &dir, &long, 0o644).await, Err(nfsstat3::NFS3ERR_NAMETOOLONG));

    let mut listed = readdir_names(&mut nfs, &dir, 4096).await;
    listed.sort();
    assert_eq!(listed, [".", "..", "a2", "b", "l", "p"]);

    // REMOVE, RMDIR, and handles of what is gone.
    assert_eq!(
        status(nfs.rmdir(&RMDIR3args { object: at(&home, "d") }).await.unwrap()),
        nfsstat3::NFS3ERR_NOTEMPTY
    );
    nfs.remove(&REMOVE3args { object: at(&dir, "b") }).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.unwrap().nlink, 1, "still linked as a2");
    nfs.remove(&REMOVE3args { object: at(&dir, "a2") }).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &file).await.err(), Some(nfsstat3::NFS3ERR_STALE));
    let read = READ3args { file: file.clone(), offset: 0, count: 10 };
    assert_eq!(status(nfs.read(&read).await.unwrap()), nfsstat3::NFS3ERR_STALE);
    for n in ["l", "p"] {
        nfs.remove(&REMOVE3args { object: at(&dir, n) }).await.unwrap().unwrap();
    }
    nfs.rmdir(&RMDIR3args { object: at(&home, "d") }).await.unwrap().unwrap();
    assert_eq!(getattr(&mut nfs, &dir).await.err(), Some(nfsstat3::NFS3ERR_STALE));
    let garbage = nfs_fh3 { data: Opaque::owned(vec![1, 2, 3]) };
    assert_eq!(getattr(&mut nfs, &garbage).await.err(), Some(nfsstat3::NFS3ERR_BADHANDLE));
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_ids_are_used_and_root_is_squashed() {
    let vol = Volume::local();
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut root_nfs, root) = client(gw.port, 0, 0).await;
    let shared = MKDIR3args {
        where_: at(&root, "pub"),
        attributes: sattr3 { mode: set_mode3::Some(0o777), ..Default::default() },
    };
    root_nfs.mkdir(&shared).await.unwrap().unwrap();
    drop(root_nfs);
    gw.stop();
    let gw = Gateway::start(&vol, "gw", &["--anon-uid", "4242", "--anon-gid", "4343"]); // squash root by default

    let (mut root_nfs, root) = client(gw.port, 0, 0).await;
    let public = lookup(&mut root_nfs, &root, "pub").await.unwrap();
    let squashed = create(&mut root_nfs, &public, "by-root", 0o644).await.unwrap();
    let attr = getattr(&mut root_nfs, &squashed).await.unwrap();
    assert_eq!((attr.uid, attr.gid), (4242, 4343), "root must be squashed to the anonymous ids");
    assert_eq!(create(&mut root_nfs, &root, "in-root", 0o644).await, Err(nfsstat3::NFS3ERR_ACCES));

    let (mut alice, _) = client(gw.port, 1000, 100).await;
    let private = create(&mut alice, &public, "alice", 0o600).await.unwrap();
    write(&mut alice, &private, 0, b"secret", stable_how::FILE_SYNC).await.unwrap();
    let attr = getattr(&mut alice, &private).await.unwrap();
    assert_eq!((attr.uid, attr.gid), (1000, 100));

    let (mut bob, _) = client(gw.port, 2000, 200).await;
    let read = READ3args { file: private.clone(), offset: 0, count: 10 };
    assert_eq!(status(bob.read(&read).await.unwrap()), nfsstat3::NFS3ERR_ACCES);
    assert_eq!(write(&mut bob, &private, 0, b"x", stable_how::UNSTABLE).await, Err(nfsstat3::NFS3ERR_ACCES));
    let access = bob.access(&ACCESS3args { object: private.clone(), access: 0x3f }).await.unwrap().unwrap();
    assert_eq!(access.access, 0);
    let mut chmod = set(sattr3 { mode: set_mode3::Some(0o666), ..Default::default() });
    chmod.object = private.clone();
    assert_eq!(status(bob.setattr(&chmod).await.unwrap()), nfsstat3::NFS3ERR_PERM);
    alice.setattr(&chmod).await.unwrap().unwrap();
    assert_eq!(read_all(&mut bob, &private, 100).await.unwrap(), b"secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn export_rules_refuse_other_addresses_and_changes() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--allow", "127.0.0.1/32", "--read-only", "--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    assert_eq!(create(&mut nfs, &root, "f", 0o644).await, Err(nfsstat3::NFS3ERR_ROFS));
    let mkdir = MKDIR3args { where_: at(&root, "d"), attributes: sattr3::default() };
    assert_eq!(status(nfs.mkdir(&mkdir).await.unwrap()), nfsstat3::NFS3ERR_ROFS);
    let access = nfs.access(&ACCESS3args { object: root.clone(), access: 0x3f }).await.unwrap().unwrap();
    assert_eq!(access.access & (ACCESS3_MODIFY | ACCESS3_DELETE), 0, "read-only: no write access");
    assert_eq!(readdir_names(&mut nfs, &root, 4096).await.len(), 2, "reads still work");

    // 127.0.0.2 is another host to the gateway: refused at MOUNT and at every NFS call.
    let other = Some("127.0.0.2".parse().unwrap());
    match mount_root(connect(gw.port, other).await.unwrap(), auth(0, 0)).await {
        Err(MountError::Denied(mountstat3::MNT3ERR_ACCES)) => {}
        other => panic!("MOUNT from outside --allow: {other:?}"),
    }
    let mut outsider =
        Nfs3Client::new_with_auth(connect(gw.port, other).await.unwrap(), auth(0, 0), opaque_auth::default());
    match outsider.getattr(&GETATTR3args { object: root.clone() }).await {
        Err(RpcError::Auth(auth_stat::AUTH_TOOWEAK)) => {}
        other => panic!("GETATTR from outside --allow: {other:?}"),
    }
    assert!(gw.log().contains("refusing a client outside --allow"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn readdir_pages_a_100k_entry_directory_exactly_once() {
    const FILES: usize = 99_000;
    const LINKS: usize = 1_000;
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let big = made(
        nfs.mkdir(&MKDIR3args { where_: at(&root, "big"), attributes: sattr3::default() })
            .await
            .unwrap()
            .unwrap()
            .obj,
    );
    // Eight clients at once, so that the durable creates share commits.
    let mut workers = Vec::new();
    for w in 0..8 {
        let (port, big) = (gw.port, big.clone());
        workers.push(tokio::spawn(async move {
            let (mut nfs, _) = client(port, 0, 0).await;
            let mut first = Vec::new();
            for i in (w..FILES).step_by(8) {
                let fh = nfs
                    .mknod(&MKNOD3args {
                        where_: at(&big, &format!("f{i:06}")),
                        what: mknoddata3::NF3FIFO(sattr3::default()),
                    })
                    .await
                    .unwrap();
                let fh = made(fh.unwrap().obj);
                if i < LINKS {
                    first.push((i, fh));
                }
            }
            for (i, fh) in first {
                nfs.link(&LINK3args { file: fh, link: at(&big, &format!("h{i:06}")) })
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut expected: Vec<String> = (0..FILES).map(|i| format!("f{i:06}")).collect();
    expected.extend((0..LINKS).map(|i| format!("h{i:06}")));
    expected.extend([".".to_string(), "..".to_string()]);
    expected.sort();

    let mut names = readdir_names(&mut nfs, &big, 8192).await;
    names.sort();
    assert_eq!(names.len(), expected.len(), "READDIR returned entries more or less than once");
    assert!(names == expected, "READDIR names differ");

    let plus = readdirplus_names(&mut nfs, &big, 8192, 65536).await;
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for (name, fileid) in &plus {
        assert!(counted.insert(name.clone(), *fileid).is_none(), "{name} listed twice");
    }
    assert!(counted.keys().eq(expected.iter()), "READDIRPLUS names differ");
    for i in 0..LINKS {
        assert_eq!(counted[&format!("h{i:06}")], counted[&format!("f{i:06}")], "a hard link names its file");
    }

    // Over NFSv4.1, which lists no "." or "..".
    let m = elasticfs_tests::nfs4::mount41(gw.port).await;
    let listed = elasticfs_tests::nfs4::names(m.as_ref(), "/big").await;
    assert_eq!(listed.len(), expected.len() - 2, "NFSv4.1 READDIR returned entries more or less than once");
    assert!(listed.iter().eq(expected.iter().filter(|n| *n != "." && *n != "..")), "NFSv4.1 names differ");
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_data_survives_a_gateway_kill_and_handles_stay_valid() {
    let vol = Volume::local();
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let file = create(&mut nfs, &root, "f", 0o644).await.unwrap();
    let data = pattern(5, (5 << 20) + 77);
    let verf = write(&mut nfs, &file, 0, &data, stable_how::UNSTABLE).await.unwrap();
    assert_eq!(commit(&mut nfs, &file).await.unwrap(), verf);
    drop(nfs);
    gw.kill();
    gw.restart();

    let (mut nfs, _) = client(gw.port, 0, 0).await;
    assert_eq!(read_all(&mut nfs, &file, 1 << 20).await.unwrap(), data, "committed data lost");
    let again = write(&mut nfs, &file, 0, b"x", stable_how::UNSTABLE).await.unwrap();
    assert_ne!(again, verf, "a restarted gateway must change its write verifier");
    assert_eq!(lookup(&mut nfs, &root, "f").await.unwrap(), file, "handles must survive a restart");
}

/// Raw RPC records, for input no client library would send.
fn raw_call(prog: u32, vers: u32, proc: u32, rpcvers: u32) -> Vec<u8> {
    let words = [0x1234, 0, rpcvers, prog, vers, proc, 0, 0, 0, 0];
    let body: Vec<u8> = words.iter().flat_map(|w: &u32| w.to_be_bytes()).collect();
    let mut record = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    record.extend(body);
    record
}

fn reply_words(stream: &mut TcpStream) -> Vec<u32> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; (u32::from_be_bytes(header) & 0x7fff_ffff) as usize];
    stream.read_exact(&mut body).unwrap();
    body.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_rpc_input_never_stops_the_gateway() {
    let vol = Volume::local();
    let mut gw = Gateway::start(&vol, "gw", &[]);
    let addr = ("127.0.0.1", gw.port);
    let mut s = TcpStream::connect(addr).unwrap();
    // Wrong program, wrong version, wrong RPC version, unknown procedure: error replies.
    s.write_all(&raw_call(100_099, 1, 0, 2)).unwrap();
    assert_eq!(reply_words(&mut s)[5], 1, "PROG_UNAVAIL");
    s.write_all(&raw_call(100_003, 5, 0, 2)).unwrap();
    assert_eq!(reply_words(&mut s)[5..], [2, 3, 4], "PROG_MISMATCH 3..4");
    s.write_all(&raw_call(100_005, 4, 0, 2)).unwrap();
    assert_eq!(reply_words(&mut s)[5..], [2, 3, 3], "MOUNT's PROG_MISMATCH 3..3");
    s.write_all(&raw_call(100_003, 3, 0, 3)).unwrap();
    assert_eq!(reply_words(&mut s)[2..5], [1, 0, 2], "MSG_DENIED RPC_MISMATCH");
    s.write_all(&raw_call(100_003, 3, 99, 2)).unwrap();
    assert_eq!(reply_words(&mut s)[5], 3, "PROC_UNAVAIL");
    // A GETATTR whose arguments stop short: GARBAGE_ARGS.
    s.write_all(&raw_call(100_003, 3, 1, 2)).unwrap();
    assert_eq!(reply_words(&mut s)[5], 4, "GARBAGE_ARGS");
    drop(s);
    // Random bytes as a record, a truncated record, an oversized record: dropped connections.
    let mut seed = 42u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect();
    for input in [
        [&(0x8000_0000u32 | 4096).to_be_bytes()[..], &noise[..]].concat(),
        [&(0x8000_0000u32 | 100).to_be_bytes()[..], &noise[..10]].concat(),
        0xffff_ffffu32.to_be_bytes().to_vec(),
        noise.clone(),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&input).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert!(gw.alive(), "the gateway died: {}", gw.log());
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    nfs.null().await.unwrap();
    getattr(&mut nfs, &root).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_and_fuse_clients_share_one_namespace() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start("5s");
    let vol = Volume::shared(&service, &s3);
    let gw_a = Gateway::start(&vol, "gw-a", &["--squash", "none"]);
    let gw_b = Gateway::start(&vol, "gw-b", &["--squash", "none"]);
    let mount = vol.mount_named("fuse", "", None);
    let (mut a, root_a) = client(gw_a.port, 0, 0).await;
    let (mut b, root_b) = client(gw_b.port, 0, 0).await;
    assert_eq!(root_a, root_b, "two gateways of one file system give the same handles");

    // NFS → FUSE.
    let data = pattern(21, 3_000_000);
    let file = create(&mut a, &root_a, "from-nfs", 0o644).await.unwrap();
    write(&mut a, &file, 0, &data, stable_how::UNSTABLE).await.unwrap();
    commit(&mut a, &file).await.unwrap();
    assert!(std::fs::read(mount.path.join("from-nfs")).unwrap() == data, "FUSE read differs");

    // FUSE → NFS (the other gateway).
    let other = pattern(22, 2_000_000);
    std::fs::write(mount.path.join("from-fuse"), &other).unwrap();
    let fh = lookup(&mut b, &root_b, "from-fuse").await.unwrap();
    assert!(read_all(&mut b, &fh, 1 << 20).await.unwrap() == other, "NFS read differs");

    // A file rewritten through FUSE after a gateway read it: the gateway reads the new bytes.
    let fh_a = lookup(&mut a, &root_a, "from-fuse").await.unwrap();
    assert!(read_all(&mut a, &fh_a, 1 << 20).await.unwrap() == other);
    let newer = pattern(23, 2_500_000);
    std::fs::write(mount.path.join("from-fuse"), &newer).unwrap();
    assert!(read_all(&mut a, &fh_a, 1 << 20).await.unwrap() == newer, "a gateway served stale data");

    // One namespace: a directory made on B is listed by A and by the mount.
    b.mkdir(&MKDIR3args { where_: at(&root_b, "made-on-b"), attributes: sattr3::default() })
        .await
        .unwrap()
        .unwrap();
    let listed = readdir_names(&mut a, &root_a, 4096).await;
    assert!(listed.contains(&"made-on-b".to_string()), "{listed:?}");
    assert!(mount.path.join("made-on-b").is_dir());
    mount.unmount();
}

/// libnfs-utils copy a 1 GiB file in over NFSv3 and out over NFSv3 and NFSv4.0; a second goes
/// in over NFSv4.0 and out through libnfs-utils' NFSv4.0. libnfs 4.0.0 cannot encode an NFSv4
/// WRITE of 4,000 bytes or more ("ZDR error: Failed to encode COMPOUND4args", before anything
/// is sent; the same against Debian's nfs-ganesha), so that file goes in through our own
/// COMPOUND client, in 1 MiB UNSTABLE WRITEs and a COMMIT; small files go in through nfs-cp.
#[test]
fn libnfs_utils_copy_a_large_file_in_and_out() {
    if Command::new("nfs-cp").arg("--help").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but nfs-cp (libnfs-utils) is missing");
        eprintln!("skipping: nfs-cp (Debian's libnfs-utils) is not installed");
        return;
    }
    const SIZE: usize = 1 << 30;
    let vol = Volume::local();
    // The source, a copy back, and two files in the store.
    assert!(free_disk_bytes(vol.dir.path()) > 5 * SIZE as u64, "not enough free disk for this test");
    let metrics = free_port();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none", "--metrics", &format!("127.0.0.1:{metrics}")]);
    let source = vol.dir.path().join("source");
    let mut hash = blake3::Hasher::new();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&source).unwrap());
    for i in 0..(SIZE >> 22) {
        let piece = pattern(1000 + i as u64, 4 << 20);
        hash.update(&piece);
        out.write_all(&piece).unwrap();
    }
    drop(out);
    let hash = hash.finalize();
    let run = |args: &[&str]| run_ok(Command::new(args[0]).args(&args[1..]));
    run(&["nfs-cp", source.to_str().unwrap(), &gw.url("/big", 3)]);
    for version in [3, 4] {
        let listing = run(&["nfs-ls", &gw.url("", version)]);
        assert!(listing.contains(&SIZE.to_string()) && listing.contains("big"), "{listing}");
        let back = vol.dir.path().join("back");
        run(&["nfs-cp", &gw.url("/big", version), back.to_str().unwrap()]);
        assert_eq!(std::fs::metadata(&back).unwrap().len(), SIZE as u64);
        assert_eq!(hash_file(&back), hash, "the copy out over NFSv{version} differs from what went in");
        std::fs::remove_file(&back).unwrap();
    }
    // The gateway is a client like a mount: its metrics count what went through it.
    let m = scrape(metrics);
    assert_eq!(m["elasticfs_client_written_bytes_total"], SIZE as f64, "{m:?}");
    assert_eq!(m["elasticfs_client_read_bytes_total"], 2.0 * SIZE as f64, "{m:?}");
    assert!(m[r#"elasticfs_client_operation_seconds_count{op="write"}"#] >= (SIZE >> 20) as f64, "{m:?}");

    // In over NFSv4.0 (our client), out over NFSv4.0 (libnfs-utils).
    let mut wire = Wire::connect(gw.port);
    let client = wire.client("libnfs-test");
    let open = Op::Open { client, owner: "o".into(), seqid: 1, name: "big4".into(), deny: 0, create: true };
    let opened = wire.call(0, &[Op::PutRootFh, open, Op::GetFh]);
    assert_eq!(opened.status, 0, "{opened:?}");
    let (stateid, fh) = (opened.results[1].stateid, opened.results[2].fh.clone());
    let mut piece = vec![0u8; 1 << 20];
    let mut file = std::fs::File::open(&source).unwrap();
    for offset in (0..SIZE as u64).step_by(piece.len()) {
        file.read_exact(&mut piece).unwrap();
        let write = Op::Write { stateid, offset, stable: Stable::Unstable, data: piece.clone() };
        let wrote = wire.call(0, &[Op::PutFh(fh.clone()), write]);
        assert_eq!(wrote.status, 0, "WRITE at {offset}: {wrote:?}");
    }
    let committed = wire.call(0, &[Op::PutFh(fh.clone()), Op::Commit, Op::Close { seqid: 2, stateid }]);
    assert_eq!(committed.status, 0, "{committed:?}");
    std::fs::remove_file(&source).unwrap();
    let back = vol.dir.path().join("back");
    run(&["nfs-cp", &gw.url("/big4", 4), back.to_str().unwrap()]);
    assert_eq!(hash_file(&back), hash, "what went in over NFSv4.0 differs coming out");
    std::fs::remove_file(&back).unwrap();

    // A small file in and out over NFSv4.0 with libnfs-utils.
    let small = vol.dir.path().join("small");
    std::fs::write(&small, pattern(5, 3000)).unwrap();
    run(&["nfs-cp", small.to_str().unwrap(), &gw.url("/small", 4)]);
    let back = vol.dir.path().join("small-back");
    run(&["nfs-cp", &gw.url("/small", 4), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == pattern(5, 3000), "the small file differs");
}
