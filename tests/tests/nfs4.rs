//! NFSv4.1 and NFSv4.0 over the wire: the `nfs-rs` client (4.1), a COMPOUND client of our own
//! for forged and malformed input (4.0), and what is written read back through FUSE and
//! NFSv3. (libnfs-utils over NFSv4.0 is in nfs.rs, beside its NFSv3 twin.) There is no
//! kernel NFS client here.

use bytes::Bytes;
use elasticfs_tests::locks::{hold, lock_state};
use elasticfs_tests::nfs::{self as v3, Gateway};
use elasticfs_tests::nfs4::{names, Op, Stable, Wire};
use elasticfs_tests::{fuse_available, pattern, MetaService, S3Server, Volume};
use nfs_rs::Mount;

const BAD_STATEID: u32 = 10025;
const STALE_STATEID: u32 = 10023;
const OLD_STATEID: u32 = 10024;
const BADHANDLE: u32 = 10001;
const STALE: u32 = 70;
const NOFILEHANDLE: u32 = 10020;
const OP_ILLEGAL: u32 = 10044;
const MINOR_VERS_MISMATCH: u32 = 10021;
const OP_NOT_IN_SESSION: u32 = 10071;
const STALE_CLIENTID: u32 = 10022;
const BAD_SEQID: u32 = 10026;
const BADXDR: u32 = 10036;
const RESOURCE: u32 = 10018;
const DENIED: u32 = 10010;
const GRACE: u32 = 10013;
const NO_GRACE: u32 = 10033;
const RECLAIM_BAD: u32 = 10034;
/// The lease (and so the grace period) of the restart tests, in seconds: long enough for their
/// checks within the grace period on a loaded 2-core machine.
const GRACE_TEST_LEASE: &str = "10";
const NOENT: u32 = 2;
const INVAL: u32 = 22;
const TOOSMALL: u32 = 10005;
const CLID_INUSE: u32 = 10017;
const NOT_SAME: u32 = 10027;
const BADSESSION: u32 = 10052;
const SYMLINK: u32 = 10029;
const REP_TOO_BIG: u32 = 10066;
const REP_TOO_BIG_TO_CACHE: u32 = 10067;
const NOT_ONLY_OP: u32 = 10081;
const OPENMODE: u32 = 10038;
const SAME: u32 = 10009;
const SHARE_DENIED: u32 = 10015;
const LOCKED: u32 = 10012;
const COMPLETE_ALREADY: u32 = 10054;

/// A file system on a metadata service (sessions of `lease`) and S3, mounted with FUSE: for
/// gateways and a mount to share one namespace and one lock table. Destructure it with `mount`
/// last: bindings drop in reverse order, and a test that fails must let go of its mount before
/// the volume's directory is removed and the service stops (else removing the directory walks
/// into a mount that waits for the service forever).
struct Shared {
    mount: elasticfs_tests::Mount,
    vol: Volume,
    _service: MetaService,
    _s3: S3Server,
}

fn shared(lease: &str) -> Shared {
    let s3 = S3Server::start();
    let service = MetaService::start(lease);
    let vol = Volume::shared(&service, &s3);
    let mount = vol.mount_named("fuse", "", None);
    Shared { mount, vol, _service: service, _s3: s3 }
}

async fn mount41(gw: &Gateway) -> Box<dyn Mount> {
    elasticfs_tests::nfs4::mount41(gw.port).await
}

/// Writes `data` to a new file `path` in transfers of the mount's write size, and commits.
async fn write_file(m: &dyn Mount, path: &str, data: &[u8]) -> Bytes {
    let made = m.create_path(path, Some(0o644)).await.unwrap();
    let wsize = m.get_max_write_size() as usize;
    for (i, piece) in data.chunks(wsize).enumerate() {
        m.write(made.fh.clone(), (i * wsize) as u64, Bytes::copy_from_slice(piece)).await.unwrap();
    }
    m.commit(made.fh.clone(), 0, 0).await.unwrap();
    made.fh
}

async fn read_file(m: &dyn Mount, path: &str) -> Vec<u8> {
    let fh = m.lookup_path(path).await.unwrap().fh;
    let size = m.getattr(fh.clone()).await.unwrap().filesize as usize;
    let mut back = Vec::new();
    while back.len() < size {
        let piece = m.read(fh.clone(), back.len() as u64, m.get_max_read_size()).await.unwrap();
        assert!(!piece.is_empty(), "a short read at {} of {size}", back.len());
        back.extend_from_slice(&piece);
    }
    back
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs41_files_and_directories_round_trip() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let m = mount41(&gw).await;
    assert!(m.get_max_write_size() >= 512 << 10 && m.get_max_read_size() >= 512 << 10);
    m.mkdir_path("/dir", 0o755).await.unwrap();
    let data = pattern(7, 3 << 20);
    write_file(m.as_ref(), "/dir/file", &data).await;
    let attr = m.getattr_path("/dir/file").await.unwrap();
    assert_eq!(attr.filesize, data.len() as u64);
    assert_eq!(attr.file_mode & 0o7777, 0o644);
    assert!(read_file(m.as_ref(), "/dir/file").await == data, "read back differs");
    assert_eq!(names(m.as_ref(), "/dir").await, vec!["file"]);
    m.rename_path("/dir/file", "/dir/renamed").await.unwrap();
    m.symlink_path("renamed", "/dir/link").await.unwrap();
    assert_eq!(m.readlink_path("/dir/link").await.unwrap(), "renamed");
    m.link_path("/dir/renamed", "/dir/hard").await.unwrap();
    assert_eq!(m.getattr_path("/dir/renamed").await.unwrap().nlink, 2);
    assert_eq!(names(m.as_ref(), "/dir").await, vec!["hard", "link", "renamed"]);
    // A lock through an open, over NFSv4.1.
    let opened = m.open_path_stateful("/dir/renamed", nfs_rs::OPEN_BOTH).await.unwrap();
    let token = m.lock_open_stateful(&opened, 2, 0, 4096).await.unwrap();
    m.unlock_stateful(token).await.unwrap();
    m.close_stateful(opened).await.unwrap();
    assert!(m.rmdir_path("/dir").await.is_err(), "a directory with entries is not removed");
    for name in ["link", "renamed", "hard"] {
        m.remove_path(&format!("/dir/{name}")).await.unwrap();
    }
    m.rmdir_path("/dir").await.unwrap();
    assert!(m.lookup_path("/dir").await.is_err());
    m.umount().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs4_fuse_and_nfs3_see_each_others_files() {
    if !fuse_available() {
        return;
    }
    let Shared { _s3, _service, vol, mount } = shared("5s");
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let m = mount41(&gw).await;
    let (mut nfs3, root) = v3::client(gw.port, 0, 0).await;

    // NFSv4.1 → FUSE and NFSv3.
    let data = pattern(31, 5_000_000);
    write_file(m.as_ref(), "/from-v4", &data).await;
    assert!(std::fs::read(mount.path.join("from-v4")).unwrap() == data, "FUSE read differs");
    let fh = v3::lookup(&mut nfs3, &root, "from-v4").await.unwrap();
    assert!(v3::read_all(&mut nfs3, &fh, 1 << 20).await.unwrap() == data, "NFSv3 read differs");

    // FUSE → NFSv4.1, and a rewrite seen on the next read.
    let other = pattern(32, 2_000_000);
    std::fs::write(mount.path.join("from-fuse"), &other).unwrap();
    assert!(read_file(m.as_ref(), "/from-fuse").await == other, "NFSv4.1 read differs");
    let newer = pattern(33, 2_500_000);
    std::fs::write(mount.path.join("from-fuse"), &newer).unwrap();
    assert!(read_file(m.as_ref(), "/from-fuse").await == newer, "NFSv4.1 served stale data");

    // NFSv3 → NFSv4.1.
    let third = pattern(34, 1_000_000);
    let file = v3::create(&mut nfs3, &root, "from-v3", 0o644).await.unwrap();
    v3::write(&mut nfs3, &file, 0, &third, nfs3_client::nfs3_types::nfs3::stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert!(read_file(m.as_ref(), "/from-v3").await == third, "NFSv4.1 read of an NFSv3 file differs");
    let mut listed = names(m.as_ref(), "/").await;
    listed.retain(|n| n.starts_with("from-"));
    assert_eq!(listed, vec!["from-fuse", "from-v3", "from-v4"]);
    m.umount().await.unwrap();
    mount.unmount();
}

/// EXCHANGE_ID, CREATE_SESSION and RECLAIM_COMPLETE as RFC 8881 sections 18.35, 18.36 and
/// 18.51 have them: flags, principals, a client's reboot (its opens let go), the sizes a
/// session was given, and no new opens before RECLAIM_COMPLETE.
#[test]
fn nfs41_client_records_and_sessions_follow_the_rfc() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut alice, mut bob) = (Wire::connect(gw.port), Wire::connect_as(gw.port, 1001));
    let exchange = |verifier, flags| Op::ExchangeId { owner: "host".into(), verifier: [verifier; 8], flags };
    // Undefined flags, the server's own flag, an update of no record, company: all refused.
    assert_eq!(alice.call(1, &[exchange(1, 4)]).status, INVAL);
    assert_eq!(alice.call(1, &[exchange(1, 0x8000_0000)]).status, INVAL);
    assert_eq!(alice.call(1, &[exchange(1, 0x4000_0000)]).status, NOENT);
    assert_eq!(alice.call(1, &[exchange(1, 0), Op::PutRootFh]).status, NOT_ONLY_OP);
    let made = alice.call(1, &[exchange(1, 0)]);
    assert_eq!(made.status, 0, "{made:?}");
    let (client, sequence) = (made.last().clientid, made.last().sequence);
    let create = |client, sequence, flags, max_response, max_cached| Op::CreateSession {
        client,
        sequence,
        flags,
        max_request: 8192,
        max_response,
        max_cached,
    };
    // Only the principal that made a record confirms it; flags and sizes are checked.
    assert_eq!(bob.call(1, &[create(client, sequence, 0, 8192, 8192)]).status, CLID_INUSE);
    assert_eq!(alice.call(1, &[create(client, sequence, 8, 8192, 8192)]).status, INVAL);
    assert_eq!(alice.call(1, &[create(client, sequence, 0, 100, 100)]).status, TOOSMALL);
    let created = alice.call(1, &[create(client, sequence, 0, 1024, 512)]);
    assert_eq!(created.status, 0, "{created:?}");
    let session = created.last().session;

    // A reply growing past what may be cached, then past what may be sent at all: the
    // operation that crosses the line gets the error, and the slot goes on.
    let sequence_op = |session, seqid, cache| Op::Sequence { session, seqid, slot: 0, cache };
    // Every attribute of the first two words but the write-only time_access_set and
    // time_modify_set (48 and 54).
    let word1 = !(1 << (48 - 32) | 1 << (54 - 32));
    let all_attributes =
        || Op::Raw(9, [2u32, u32::MAX, word1].iter().flat_map(|w| w.to_be_bytes()).collect());
    let big = |seqid, cache| {
        let mut ops = vec![sequence_op(session, seqid, cache), Op::PutRootFh];
        ops.extend((0..12).map(|_| all_attributes()));
        ops
    };
    assert_eq!(alice.call(1, &big(1, true)).status, REP_TOO_BIG_TO_CACHE);
    assert_eq!(alice.call(1, &big(2, false)).status, REP_TOO_BIG);
    assert_eq!(alice.call(1, &[sequence_op(session, 3, false), Op::PutRootFh]).status, 0);

    // New opens only after RECLAIM_COMPLETE; reclaims only before it (and in a grace period).
    let open = |seqid| {
        let open = Op::Open { client, owner: "o".into(), seqid: 0, name: "f".into(), deny: 0, create: true };
        vec![sequence_op(session, seqid, false), Op::PutRootFh, open]
    };
    assert_eq!(alice.call(1, &open(4)).status, GRACE);
    let complete = |seqid| vec![sequence_op(session, seqid, false), Op::Raw(58, vec![0; 4])];
    assert_eq!(alice.call(1, &complete(5)).status, 0);
    assert_eq!(alice.call(1, &complete(6)).status, COMPLETE_ALREADY);
    let opened = alice.call(1, &open(7));
    assert_eq!(opened.status, 0, "{opened:?}");
    let reclaim = Op::OpenPrevious { client, owner: "o".into(), seqid: 0 };
    let previous = [sequence_op(session, 8, false), Op::PutRootFh, Op::Lookup("f".into()), reclaim];
    assert_eq!(alice.call(1, &previous).status, NO_GRACE);
    // A READ is cut to fit the session's replies (1 KiB here) rather than refused.
    let stateid = opened.last().stateid;
    let write = Op::Write { stateid, offset: 0, stable: Stable::FileSync, data: vec![1; 800] };
    let wrote =
        alice.call(1, &[sequence_op(session, 9, false), Op::PutRootFh, Op::Lookup("f".into()), write]);
    assert_eq!(wrote.status, 0, "{wrote:?}");
    let read = Op::Read { stateid, offset: 0, count: 800 };
    let read = alice.call(1, &[sequence_op(session, 10, false), Op::PutRootFh, Op::Lookup("f".into()), read]);
    assert_eq!((read.status, read.last().data.len()), (0, 512));

    // Confirmed: the same verifier keeps the id; another principal may not take a record
    // with a session; an update with another verifier is NOT_SAME.
    assert_eq!(alice.call(1, &[exchange(1, 0)]).last().clientid, client);
    assert_eq!(bob.call(1, &[exchange(1, 0)]).status, CLID_INUSE);
    assert_eq!(alice.call(1, &[exchange(2, 0x4000_0000)]).status, NOT_SAME);
    // A reboot (a new verifier): a new id, and the old session lives until it is confirmed.
    let rebooted = alice.call(1, &[exchange(2, 0)]);
    let (new_client, new_sequence) = (rebooted.last().clientid, rebooted.last().sequence);
    assert_ne!(new_client, client);
    assert_eq!(alice.call(1, &[sequence_op(session, 11, false)]).status, 0);
    assert_eq!(alice.call(1, &[create(new_client, new_sequence, 0, 8192, 8192)]).status, 0);
    assert_eq!(alice.call(1, &[sequence_op(session, 12, false)]).status, BADSESSION);
}

/// A gateway (as root, unsquashed) of a new local volume, and a connection to it with a
/// confirmed 4.0 client "owner-a": (volume, gateway, connection, client id).
fn local_client() -> (Volume, Gateway, Wire, u64) {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let mut w = Wire::connect(gw.port);
    let client = w.client("owner-a");
    (vol, gw, w, client)
}

/// The attributes `size` and nothing else (a fattr4, for SETATTR, VERIFY and NVERIFY).
fn size_attr(size: u64) -> Vec<u8> {
    [1u32, 1 << 4, 8].iter().flat_map(|v| v.to_be_bytes()).chain(size.to_be_bytes()).collect()
}

/// An OPEN that creates `name` in the current directory if need be, by open-owner `owner` of
/// `client` at `seqid`, for reading and writing and denying `deny`.
fn create_as(client: u64, owner: &str, seqid: u32, name: &str, deny: u32) -> Op {
    Op::Open { client, owner: owner.into(), seqid, name: name.into(), deny, create: true }
}

/// SETATTR of the size through `stateid`.
fn set_size(stateid: [u8; 16], size: u64) -> Op {
    Op::Raw(34, [stateid.to_vec(), size_attr(size)].concat())
}

/// Share reservations (RFC 7530 section 9.9): an open denying writes holds off other opens
/// for writing, the same owner's included, and writes outside any open; CLOSE lifts it.
#[test]
fn nfs40_share_reservations_hold_off_opens_and_anonymous_writes() {
    let (_vol, _gw, mut w, client) = local_client();
    let open = |owner: &str, seqid, deny| create_as(client, owner, seqid, "shared", deny);
    const DENY_WRITE: u32 = 2;
    let opened = w.call(0, &[Op::PutRootFh, open("o1", 1, DENY_WRITE), Op::GetFh]);
    assert_eq!(opened.status, 0, "{opened:?}");
    let (stateid, fh) = (opened.results[1].stateid, opened.results[2].fh.clone());
    assert_eq!(w.call(0, &[Op::PutRootFh, open("o2", 1, 0)]).status, SHARE_DENIED);
    assert_eq!(w.call(0, &[Op::PutRootFh, open("o1", 2, 0)]).status, SHARE_DENIED, "its own deny too");
    let anonymous = [0u8; 16];
    let write = |stateid| Op::Write { stateid, offset: 0, stable: Stable::FileSync, data: b"x".to_vec() };
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), write(anonymous)]).status, LOCKED);
    assert_eq!(
        w.call(0, &[Op::PutFh(fh.clone()), set_size(anonymous, 0)]).status,
        LOCKED,
        "a new size is a write"
    );
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), write(stateid)]).status, 0, "through the open");
    let read = Op::Read { stateid: anonymous, offset: 0, count: 1 };
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), read]).status, 0, "reads are not denied");
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), Op::Close { seqid: 3, stateid }]).status, 0);
    assert_eq!(w.call(0, &[Op::PutFh(fh), write(anonymous)]).status, 0);
}

/// OPEN_DOWNGRADE, VERIFY/NVERIFY and SECINFO, which no client here sends.
#[test]
fn nfs40_open_downgrade_verify_and_secinfo() {
    let (_vol, _gw, mut w, client) = local_client();
    let open = |owner: &str, seqid, deny| create_as(client, owner, seqid, "f", deny);
    let opened = w.call(0, &[Op::PutRootFh, open("o1", 1, 2), Op::GetFh]);
    assert_eq!(opened.status, 0, "{opened:?}");
    let (stateid, fh) = (opened.results[1].stateid, opened.results[2].fh.clone());
    let wrote = w.call(
        0,
        &[
            Op::PutFh(fh.clone()),
            Op::Write { stateid, offset: 0, stable: Stable::FileSync, data: vec![7; 10] },
        ],
    );
    assert_eq!(wrote.status, 0);
    assert_eq!(w.call(0, &[Op::PutRootFh, open("o2", 1, 0)]).status, SHARE_DENIED);
    // Down to reading without denying anything: the other owner may open now; up is refused.
    let downgrade = |stateid: [u8; 16], seqid: u32, access: u32, deny: u32| {
        let mut args = stateid.to_vec();
        args.extend([seqid, access, deny].iter().flat_map(|v| v.to_be_bytes()));
        Op::Raw(21, args)
    };
    let downgraded = w.call(0, &[Op::PutFh(fh.clone()), downgrade(stateid, 2, 1, 0)]);
    assert_eq!(downgraded.status, 0);
    let stateid = downgraded.last().stateid;
    assert_eq!(w.call(0, &[Op::PutRootFh, open("o2", 2, 0)]).status, 0);
    let upgrade = downgrade(stateid, 3, 3, 0);
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), upgrade]).status, INVAL, "no upgrade");
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), set_size(stateid, 0)]).status, OPENMODE, "now read-only");
    // A time with a billion nanoseconds or more is INVAL.
    let mut late = [0u8; 16].to_vec();
    late.extend([2u32, 0, 1 << (54 - 32), 16, 1, 0, 0, 1_000_000_000].iter().flat_map(|v| v.to_be_bytes()));
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), Op::Raw(34, late)]).status, INVAL);

    // VERIFY and NVERIFY of the size (attribute 4).
    let status = |w: &mut Wire, ops: &[Op]| w.call(0, ops).status;
    assert_eq!(status(&mut w, &[Op::PutFh(fh.clone()), Op::Raw(37, size_attr(10))]), 0);
    assert_eq!(status(&mut w, &[Op::PutFh(fh.clone()), Op::Raw(37, size_attr(11))]), NOT_SAME);
    assert_eq!(status(&mut w, &[Op::PutFh(fh.clone()), Op::Raw(17, size_attr(10))]), SAME);
    assert_eq!(status(&mut w, &[Op::PutFh(fh), Op::Raw(17, size_attr(11))]), 0);

    // SECINFO of a name: AUTH_SYS; of a missing one: NOENT.
    let secinfo = |name: &[u8]| {
        let mut args = (name.len() as u32).to_be_bytes().to_vec();
        args.extend(name);
        args.resize(args.len().next_multiple_of(4), 0);
        Op::Raw(33, args)
    };
    assert_eq!(status(&mut w, &[Op::PutRootFh, secinfo(b"f")]), 0);
    assert_eq!(status(&mut w, &[Op::PutRootFh, secinfo(b"missing")]), NOENT);

    // A FIFO made by CREATE (type NF4FIFO, no attributes) is not opened: SYMLINK in 4.0, as
    // Linux answers (RFC 7530 has no better error for it).
    let mut fifo = [7u32, 4].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
    fifo.extend(b"pipe");
    fifo.extend([0u32, 0].iter().flat_map(|v| v.to_be_bytes()));
    assert_eq!(status(&mut w, &[Op::PutRootFh, Op::Raw(6, fifo)]), 0, "CREATE of a FIFO");
    let open_fifo =
        Op::Open { client, owner: "o3".into(), seqid: 1, name: "pipe".into(), deny: 0, create: false };
    assert_eq!(status(&mut w, &[Op::PutRootFh, open_fifo]), SYMLINK);
}

#[test]
fn nfs40_checks_handles_stateids_and_sequence_ids() {
    let (_vol, _gw, mut w, client) = local_client();
    let open = |seqid, name: &str, create| Op::Open {
        client,
        owner: "o1".into(),
        seqid,
        name: name.into(),
        deny: 0,
        create,
    };
    let opened = w.call(0, &[Op::PutRootFh, open(1, "f", true), Op::GetFh]);
    assert_eq!(opened.status, 0, "{opened:?}");
    let (stateid, fh) = (opened.results[1].stateid, opened.results[2].fh.clone());
    let wrote = w.call(
        0,
        &[
            Op::PutFh(fh.clone()),
            Op::Write { stateid, offset: 0, stable: Stable::FileSync, data: b"hello".to_vec() },
        ],
    );
    assert_eq!(wrote.status, 0, "{wrote:?}");
    let read = w.call(0, &[Op::PutFh(fh.clone()), Op::Read { stateid, offset: 0, count: 100 }]);
    assert_eq!(read.last().data, b"hello");

    // Forged and stale stateids, and a stateid of another file.
    let mut forged = stateid;
    forged[10] ^= 0xff;
    let status = |w: &mut Wire, ops: &[Op]| w.call(0, ops).status;
    assert_eq!(
        status(&mut w, &[Op::PutFh(fh.clone()), Op::Read { stateid: forged, offset: 0, count: 1 }]),
        BAD_STATEID
    );
    let mut before_restart = stateid;
    before_restart[4..8].copy_from_slice(&[0; 4]);
    assert_eq!(
        status(&mut w, &[Op::PutFh(fh.clone()), Op::Read { stateid: before_restart, offset: 0, count: 1 }]),
        STALE_STATEID
    );
    // Seqid 0 means "the current one" in 4.1 only: in 4.0 it is an old stateid.
    let mut zero = stateid;
    zero[..4].copy_from_slice(&[0; 4]);
    assert_eq!(
        status(&mut w, &[Op::PutFh(fh.clone()), Op::Read { stateid: zero, offset: 0, count: 1 }]),
        OLD_STATEID
    );
    let mut future = stateid;
    future[3] += 5;
    assert_eq!(
        status(&mut w, &[Op::PutFh(fh.clone()), Op::Read { stateid: future, offset: 0, count: 1 }]),
        BAD_STATEID
    );
    let other = w.call(0, &[Op::PutRootFh, open(2, "g", true), Op::GetFh]);
    let other_fh = other.results[2].fh.clone();
    assert_eq!(
        status(&mut w, &[Op::PutFh(other_fh.clone()), Op::Read { stateid, offset: 0, count: 1 }]),
        BAD_STATEID
    );
    let close_other = || Op::Close { seqid: 3, stateid: other.results[1].stateid };
    let closed = w.call(0, &[Op::PutFh(other_fh.clone()), close_other()]);
    assert_eq!(closed.status, 0);
    // A retransmission of the owner's last request gets the reply it got, not a second run.
    let again = w.call(0, &[Op::PutFh(other_fh), close_other()]);
    assert_eq!((again.status, again.last().stateid), (0, closed.last().stateid), "replayed");

    // Handles: garbage, and one of a removed file (closed: an open file lives on until its
    // CLOSE, as on Linux's server).
    assert_eq!(status(&mut w, &[Op::PutFh(b"not a handle".to_vec())]), BADHANDLE);
    assert_eq!(status(&mut w, &[Op::Lookup("f".into())]), NOFILEHANDLE);
    let mut remove = Vec::new();
    remove.extend(1u32.to_be_bytes());
    remove.extend(b"g\0\0\0");
    assert_eq!(status(&mut w, &[Op::PutRootFh, Op::Raw(28, remove)]), 0);
    assert_eq!(status(&mut w, &[Op::PutFh(opened.results[2].fh.clone()), Op::GetFh]), 0);
    assert_eq!(status(&mut w, &[Op::PutFh(other.results[2].fh.clone()), Op::GetFh]), STALE);

    // Sequence ids: the owner's next is 4; 7 is out of order. An unknown client is stale.
    assert_eq!(status(&mut w, &[Op::PutRootFh, open(7, "f", false)]), BAD_SEQID);
    let stranger =
        Op::Open { client: 12345, owner: "x".into(), seqid: 1, name: "f".into(), deny: 0, create: false };
    assert_eq!(status(&mut w, &[Op::PutRootFh, stranger]), STALE_CLIENTID);

    // CLOSE ends the stateid.
    let closed = w.call(0, &[Op::PutFh(fh.clone()), Op::Close { seqid: 4, stateid }]);
    assert_eq!(closed.status, 0, "{closed:?}");
    assert_eq!(status(&mut w, &[Op::PutFh(fh), Op::Read { stateid, offset: 0, count: 1 }]), BAD_STATEID);

    // Unknown operations, minor versions and session rules.
    let illegal = w.call(0, &[Op::PutRootFh, Op::Raw(99, Vec::new())]);
    assert_eq!((illegal.status, illegal.last().op), (OP_ILLEGAL, OP_ILLEGAL));
    let v41_only = w.call(0, &[Op::Raw(53, Vec::new())]);
    assert_eq!(v41_only.status, OP_ILLEGAL, "SEQUENCE is not an NFSv4.0 operation");
    let future_minor = w.call(2, &[Op::PutRootFh]);
    assert_eq!((future_minor.status, future_minor.results.len()), (MINOR_VERS_MISMATCH, 0));
    assert_eq!(w.call(1, &[Op::PutRootFh]).status, OP_NOT_IN_SESSION);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_compounds_never_stop_the_gateway() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &[]);
    let mut w = Wire::connect(gw.port);
    // A valid COMPOUND cut short at every length: an error reply each time, never a hang.
    let mut args = Vec::new();
    args.extend(4u32.to_be_bytes());
    args.extend(b"tag!");
    args.extend([0, 0, 0, 0, 0, 0, 0, 3]);
    args.extend(24u32.to_be_bytes()); // PUTROOTFH
    args.extend(15u32.to_be_bytes()); // LOOKUP "name"
    args.extend(4u32.to_be_bytes());
    args.extend(b"name");
    args.extend(9u32.to_be_bytes()); // GETATTR {1 word: type}
    args.extend([0, 0, 0, 1, 0, 0, 0, 2]);
    for cut in 0..args.len() {
        let reply = w.raw(&args[..cut]).expect("a reply to a truncated COMPOUND");
        let accept = u32::from_be_bytes(reply[..4].try_into().unwrap());
        if accept == 0 {
            let status = u32::from_be_bytes(reply[4..8].try_into().unwrap());
            assert!([BADXDR, 2].contains(&status), "cut at {cut}: status {status}");
        } else {
            assert_eq!(accept, 4, "cut at {cut}: GARBAGE_ARGS");
        }
    }
    // An operation count far past what follows, and far past the limit.
    let mut many = Vec::new();
    many.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    many.extend(u32::MAX.to_be_bytes());
    many.extend(24u32.to_be_bytes());
    let reply = w.raw(&many).unwrap();
    assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), RESOURCE);
    // Random operations with random arguments, on fresh connections.
    let mut seed = 7u64;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    for _ in 0..2000 {
        let mut args: Vec<u8> = vec![0, 0, 0, 0, 0, 0, 0, (next() % 2) as u8];
        let ops = next() % 6;
        args.extend(ops.to_be_bytes());
        for _ in 0..ops {
            args.extend((next() % 60).to_be_bytes());
            for _ in 0..next() % 12 {
                let word = if next() % 3 == 0 { next() } else { next() % 64 };
                args.extend(word.to_be_bytes());
            }
        }
        if w.raw(&args).is_none() {
            w = Wire::connect(gw.port);
        }
    }
    let m = mount41(&gw).await;
    m.getattr_path("/").await.unwrap();
}

/// LOCK of a whole file by lock-owner "lock-owner" through `open` (made by
/// `open_for_locking`: its open-owner's second request), or its reclaim after a restart.
fn first_lock(client: u64, open: [u8; 16], reclaim: bool) -> Op {
    Op::Lock { client, owner: "lock-owner".into(), open_seqid: 2, open_stateid: open, reclaim }
}

/// An open of `name` in the export's root by a new 4.0 client: (client, stateid, handle).
fn open_for_locking(w: &mut Wire, owner: &str, name: &str) -> (u64, [u8; 16], Vec<u8>) {
    let client = w.client(owner);
    let open =
        Op::Open { client, owner: "open-owner".into(), seqid: 1, name: name.into(), deny: 0, create: true };
    let opened = w.call(0, &[Op::PutRootFh, open, Op::GetFh]);
    assert_eq!(opened.status, 0, "{opened:?}");
    (client, opened.results[1].stateid, opened.results[2].fh.clone())
}

#[test]
fn nfs4_and_fuse_locks_exclude_each_other_across_gateways() {
    if !fuse_available() {
        return;
    }
    let Shared { _s3, _service, vol, mount } = shared("5s");
    let gw_a = Gateway::start(&vol, "gw-a", &["--squash", "none"]);
    let gw_b = Gateway::start(&vol, "gw-b", &["--squash", "none"]);
    let path = mount.path.join("locked");
    std::fs::write(&path, b"x").unwrap();

    // An NFSv4 lock through gateway A holds off FUSE, and another NFSv4 client on B.
    let mut a = Wire::connect(gw_a.port);
    let (client_a, open_a, fh) = open_for_locking(&mut a, "host-a", "locked");
    let lock = first_lock(client_a, open_a, false);
    let locked = a.call(0, &[Op::PutFh(fh.clone()), lock]);
    assert_eq!(locked.status, 0, "{locked:?}");
    assert!(lock_state(&path).starts_with("held"), "FUSE sees the NFSv4 lock");
    let mut fuse_try = elasticfs_tests::locks::lock_tool(&["hold", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&fuse_try.stdout).trim(), "busy");
    let mut b = Wire::connect(gw_b.port);
    let (client_b, open_b, fh_b) = open_for_locking(&mut b, "host-b", "locked");
    let lock_b = |seqid| Op::Lock {
        client: client_b,
        owner: "lock-owner".into(),
        open_seqid: seqid,
        open_stateid: open_b,
        reclaim: false,
    };
    assert_eq!(b.call(0, &[Op::PutFh(fh_b.clone()), lock_b(2)]).status, DENIED);
    assert_eq!(
        b.call(0, &[Op::PutFh(fh_b.clone()), Op::Lockt { client: client_b, owner: "t".into() }]).status,
        DENIED
    );

    // Unlocked: FUSE takes the lock, and NFSv4 is refused in turn.
    let unlock = Op::Locku { seqid: 1, stateid: locked.results[1].stateid };
    assert_eq!(a.call(0, &[Op::PutFh(fh), unlock]).status, 0);
    assert_eq!(lock_state(&path), "unlocked");
    let mut holder = hold(&path);
    let lockt = Op::Lockt { client: client_b, owner: "t".into() };
    assert_eq!(b.call(0, &[Op::PutFh(fh_b.clone()), lockt]).status, DENIED);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The FUSE process is gone and its lock with it.
    let relock = b.call(0, &[Op::PutFh(fh_b), lock_b(3)]);
    assert_eq!(relock.status, 0, "{relock:?}");
    fuse_try = elasticfs_tests::locks::lock_tool(&["hold", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&fuse_try.stdout).trim(), "busy");
    drop(b);
    mount.unmount();
}

#[test]
fn a_client_that_stops_renewing_loses_its_locks_after_the_lease() {
    if !fuse_available() {
        return;
    }
    let Shared { _s3, _service, vol, mount } = shared("5s");
    let gw = Gateway::start(&vol, "gw", &["--squash", "none", "--lease-time", "2"]);
    let path = mount.path.join("leased");
    std::fs::write(&path, b"x").unwrap();
    let mut w = Wire::connect(gw.port);
    let (client, open, fh) = open_for_locking(&mut w, "host", "leased");
    let lock = first_lock(client, open, false);
    assert_eq!(w.call(0, &[Op::PutFh(fh), lock]).status, 0);
    // Renewing keeps it past the lease time.
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert_eq!(w.call(0, &[Op::Renew(client)]).status, 0);
    }
    assert!(lock_state(&path).starts_with("held"), "a renewing client keeps its lock");
    // Silent: the lock goes once the lease has run out (bounded wait, no timing asserted).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lock_state(&path) != "unlocked" {
        assert!(std::time::Instant::now() < deadline, "the expired client's lock is still held");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(w.call(0, &[Op::Renew(client)]).status, STALE_CLIENTID, "the client's state is gone");
    mount.unmount();
}

/// The client "host" of `open_for_locking`, back after its gateway restarted or was taken
/// over (at `port`), reclaims its open and its lock of `fh`: its connection, client id and
/// reclaimed open.
fn reclaim_open_and_lock(port: u16, fh: &[u8]) -> (Wire, u64, [u8; 16]) {
    let mut w = Wire::connect(port);
    let client = w.client("host");
    let previous = Op::OpenPrevious { client, owner: "open-owner".into(), seqid: 1 };
    let reopened = w.call(0, &[Op::PutFh(fh.to_vec()), previous]);
    assert_eq!(reopened.status, 0, "{reopened:?}");
    let open = reopened.last().stateid;
    let reclaimed = w.call(0, &[Op::PutFh(fh.to_vec()), first_lock(client, open, true)]);
    assert_eq!(reclaimed.status, 0, "{reclaimed:?}");
    (w, client, open)
}

#[test]
fn a_restarted_gateway_lets_its_clients_reclaim_in_the_grace_period() {
    if !fuse_available() {
        return;
    }
    // The killed gateway's session outlives its restart (its locks stay held meanwhile).
    let Shared { _s3, _service, vol, mount } = shared("30s");
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none", "--lease-time", GRACE_TEST_LEASE]);
    let (kept, lost) = (mount.path.join("kept"), mount.path.join("lost"));
    std::fs::write(&kept, b"x").unwrap();
    std::fs::write(&lost, b"x").unwrap();
    let mut w = Wire::connect(gw.port);
    let (client, open, fh) = open_for_locking(&mut w, "host", "kept");
    let lock = first_lock(client, open, false);
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), lock]).status, 0);
    let mut gone = Wire::connect(gw.port);
    let (gone_client, gone_open, gone_fh) = open_for_locking(&mut gone, "gone-host", "lost");
    let lock = Op::Lock {
        client: gone_client,
        owner: "o".into(),
        open_seqid: 2,
        open_stateid: gone_open,
        reclaim: false,
    };
    assert_eq!(gone.call(0, &[Op::PutFh(gone_fh), lock]).status, 0);

    gw.kill();
    gw.restart();
    assert!(lock_state(&kept).starts_with("held"), "the lock outlived the gateway's kill");
    assert!(lock_state(&lost).starts_with("held"), "an unreclaimed lock is held through the grace period");
    // In the grace period only reclaims are served.
    let mut other = Wire::connect(gw.port);
    let other_client = other.client("other-host");
    let other_open = |seqid| Op::Open {
        client: other_client,
        owner: "oo".into(),
        seqid,
        name: "kept".into(),
        deny: 0,
        create: false,
    };
    assert_eq!(other.call(0, &[Op::PutRootFh, other_open(1)]).status, GRACE);
    // The client comes back: its open and lock, reclaimed.
    let (mut w, client, open) = reclaim_open_and_lock(gw.port, &fh);
    // A lock it never held is not reclaimed.
    let never = Op::Lock { client, owner: "never".into(), open_seqid: 3, open_stateid: open, reclaim: true };
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), never]).status, RECLAIM_BAD);

    // After the grace period (bounded wait): new opens are served, the reclaimed lock holds
    // off the others, the unreclaimed one is gone, and reclaims are refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seqid = 2;
    loop {
        let status = other.call(0, &[Op::PutRootFh, other_open(seqid)]).status;
        seqid += 1;
        if status != GRACE {
            assert_eq!(status, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the grace period never ended");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    while lock_state(&lost) != "unlocked" {
        assert!(std::time::Instant::now() < deadline, "the unreclaimed lock was never released");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(lock_state(&kept).starts_with("held"), "the reclaimed lock is held");
    let again = Op::Lock { client, owner: "late".into(), open_seqid: 4, open_stateid: open, reclaim: true };
    assert_eq!(w.call(0, &[Op::PutFh(fh), again]).status, NO_GRACE);
    mount.unmount();
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs41_committed_data_survives_a_gateway_kill() {
    let vol = Volume::local();
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let m = mount41(&gw).await;
    let data = pattern(41, 6_000_000);
    // UNSTABLE WRITEs, then COMMIT: durable once COMMIT is answered.
    write_file(m.as_ref(), "/committed", &data).await;
    gw.kill();
    gw.restart();
    let m = mount41(&gw).await;
    assert!(read_file(m.as_ref(), "/committed").await == data, "committed data lost in a kill");
}

#[test]
fn a_second_gateway_takes_over_a_failed_ones_clients() {
    if !fuse_available() {
        return;
    }
    let Shared { _s3, _service, vol, mount } = shared("30s");
    let mut gw_a = Gateway::start(&vol, "gw-a", &["--squash", "none", "--lease-time", GRACE_TEST_LEASE]);
    let path = mount.path.join("moved");
    std::fs::write(&path, b"x").unwrap();
    let mut w = Wire::connect(gw_a.port);
    let (client, open, fh) = open_for_locking(&mut w, "host", "moved");
    let lock = first_lock(client, open, false);
    assert_eq!(w.call(0, &[Op::PutFh(fh.clone()), lock]).status, 0);
    gw_a.kill();
    let failed = format!("127.0.0.1:{}", gw_a.port);
    let gw_b = Gateway::start(
        &vol,
        "gw-b",
        &["--squash", "none", "--lease-time", GRACE_TEST_LEASE, "--take-over", &failed],
    );
    assert!(lock_state(&path).starts_with("held"), "the failed gateway's lock is kept");
    // The client, now at B, reclaims; a newcomer waits out the grace period.
    reclaim_open_and_lock(gw_b.port, &fh);
    let mut other = Wire::connect(gw_b.port);
    let other_client = other.client("other-host");
    let other_open = Op::Open {
        client: other_client,
        owner: "oo".into(),
        seqid: 1,
        name: "moved".into(),
        deny: 0,
        create: false,
    };
    assert_eq!(other.call(0, &[Op::PutRootFh, other_open]).status, GRACE);
    assert!(lock_state(&path).starts_with("held"));
    mount.unmount();
}
