//! Set-user-ID and set-group-ID bits go where Linux (and its NFS server) sends them: a write or
//! truncate by anyone but root drops them, so does a chown or chgrp, chmod g+s by an owner
//! outside the file's group drops set-group-ID, and only the owner may chown, even to the ids
//! the file has. Over the NFS wire (fs-core's rules) and through FUSE (the kernel's).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use elasticfs_tests::nfs::*;
use elasticfs_tests::{fuse_available, Volume};
use nfs3_client::nfs3_types::nfs3::*;

fn set(fh: &nfs_fh3, attrs: sattr3) -> SETATTR3args {
    SETATTR3args { object: fh.clone(), new_attributes: attrs, guard: sattrguard3::None }
}

async fn setattr(nfs: &mut Client, fh: &nfs_fh3, attrs: sattr3) -> Result<(), nfsstat3> {
    match nfs.setattr(&set(fh, attrs)).await.unwrap() {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

fn mode(m: u32) -> sattr3 {
    sattr3 { mode: set_mode3::Some(m), ..Default::default() }
}

fn owner(uid: Option<u32>, gid: Option<u32>) -> sattr3 {
    sattr3 {
        uid: uid.map_or(set_uid3::None, set_uid3::Some),
        gid: gid.map_or(set_gid3::None, set_gid3::Some),
        ..Default::default()
    }
}

async fn mode_of(nfs: &mut Client, fh: &nfs_fh3) -> u32 {
    getattr(nfs, fh).await.unwrap().mode
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_drops_set_id_bits_as_linux_does() {
    let vol = Volume::local();
    let gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut root, dir) = client(gw.port, 0, 0).await;

    // A write by someone other than root drops both (group execute is set).
    let file = create(&mut root, &dir, "w", 0o644).await.unwrap();
    setattr(&mut root, &file, mode(0o6777)).await.unwrap();
    let (mut nobody, _) = client(gw.port, 65534, 65534).await;
    write(&mut nobody, &file, 0, b"x", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(mode_of(&mut root, &file).await, 0o777);
    // Root's write keeps them.
    setattr(&mut root, &file, mode(0o6777)).await.unwrap();
    write(&mut root, &file, 0, b"y", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(mode_of(&mut root, &file).await, 0o6777);
    // So does a truncate by someone other than root.
    let truncate = sattr3 { size: set_size3::Some(0), ..Default::default() };
    setattr(&mut nobody, &file, truncate).await.unwrap();
    assert_eq!(mode_of(&mut root, &file).await, 0o777);

    // chgrp by an owner who is not root: 06555 becomes 0555.
    let file = create(&mut root, &dir, "g", 0o644).await.unwrap();
    setattr(&mut root, &file, owner(Some(65534), Some(65533))).await.unwrap();
    setattr(&mut root, &file, mode(0o6555)).await.unwrap();
    let (mut member, _) = client_with_groups(gw.port, 65534, 65534, &[65534, 65533]).await;
    setattr(&mut member, &file, owner(None, Some(65534))).await.unwrap();
    let attr = getattr(&mut root, &file).await.unwrap();
    assert_eq!((attr.mode, attr.uid, attr.gid), (0o555, 65534, 65534));

    // chmod 02755 by the owner, outside the file's group: set-group-ID is dropped.
    setattr(&mut root, &file, owner(None, Some(65533))).await.unwrap();
    setattr(&mut nobody, &file, mode(0o2755)).await.unwrap();
    assert_eq!(mode_of(&mut root, &file).await, 0o755);
    // In the group it stays.
    setattr(&mut member, &file, mode(0o2755)).await.unwrap();
    assert_eq!(mode_of(&mut root, &file).await, 0o2755);

    // Someone else's chown is refused, even to the ids the file has.
    let (mut stranger, _) = client(gw.port, 65533, 65533).await;
    for (uid, gid) in [(Some(65534), Some(65533)), (Some(65534), None), (None, Some(65533))] {
        assert_eq!(
            setattr(&mut stranger, &file, owner(uid, gid)).await,
            Err(nfsstat3::NFS3ERR_PERM),
            "chown {uid:?}:{gid:?} by a stranger"
        );
    }
    assert_eq!(mode_of(&mut root, &file).await, 0o2755, "a refused chown changes nothing");
}

/// Runs `program ARGS` as `uid`/`gid` with supplementary `groups` (setpriv, util-linux).
fn run_as(uid: u32, gid: u32, groups: &[u32], program: &str, args: &[&str]) -> std::process::Output {
    let groups = groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut command = Command::new("setpriv");
    command.args([&format!("--reuid={uid}"), &format!("--regid={gid}")]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        command.arg(format!("--groups={groups}"));
    }
    command.arg(program).args(args).output().expect("run setpriv")
}

fn mode_at(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_fuse_mount_drops_set_id_bits_as_linux_does() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let dir = mount.path.join("d");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o777);

    let file = dir.join("w");
    std::fs::write(&file, b"").unwrap();
    chmod(&file, 0o6777);
    let path = file.to_str().unwrap();
    let out = run_as(65534, 65534, &[], "sh", &["-c", &format!("printf x >> {path}")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_at(&file), 0o777);
    // Root's write keeps them; a truncate by someone else drops them.
    chmod(&file, 0o6777);
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"y").unwrap();
    assert_eq!(mode_at(&file), 0o6777);
    let out = run_as(65534, 65534, &[], "sh", &["-c", &format!(": > {path}")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_at(&file), 0o777);

    let file = dir.join("g");
    std::fs::write(&file, b"").unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65533)).unwrap();
    chmod(&file, 0o6555);
    let path = file.to_str().unwrap();
    let out = run_as(65534, 65534, &[65534, 65533], "chgrp", &["65534", path]);
    assert!(out.status.success(), "{out:?}");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o555, 65534, 65534));

    std::os::unix::fs::chown(&file, None, Some(65533)).unwrap();
    let out = run_as(65534, 65534, &[], "chmod", &["2755", path]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_at(&file), 0o755);

    let out = run_as(65533, 65533, &[], "chown", &["65534:65533", path]);
    assert!(!out.status.success(), "a stranger's chown to the file's own ids must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
    mount.unmount();
}
