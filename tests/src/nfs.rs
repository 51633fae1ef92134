//! Harness for the NFS gateway tests: runs `elasticfs nfs serve` as its own process and talks
//! to it with the `nfs3_client` crate over real TCP (this machine has no kernel NFS client).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

use nfs3_client::io::{AsyncRead, AsyncWrite};
use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, Nfs3Client};
use tokio::net::{TcpSocket, TcpStream};

use crate::{elasticfs_bin, start_listening, ServerChild, Volume};

/// A running `elasticfs nfs serve` for a volume.
pub struct Gateway {
    pub port: u16,
    meta: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    log: PathBuf,
    child: ServerChild,
}

impl Gateway {
    /// Serves `vol` on a free port of 127.0.0.1 with `extra` arguments (such as `--squash
    /// none`), its disk cache and log in the volume's directory under `name`.
    pub fn start(vol: &Volume, name: &str, extra: &[&str]) -> Gateway {
        let cache = vol.dir.path().join(format!("cache-{name}"));
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["-o".into(), format!("cache-dir={}", cache.display())]);
        let log = vol.dir.path().join(format!("{name}.log"));
        let mut gateway = Gateway {
            port: crate::free_port(),
            meta: vol.meta.clone(),
            env: vol.env.clone(),
            args,
            log,
            child: ServerChild::default(),
        };
        gateway.spawn();
        gateway
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(elasticfs_bin());
        command
            .args(["nfs", "serve", "--meta", &self.meta, "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ELASTICFS_LOG", "info")
            .stderr(log);
        let (child, port) = start_listening(command, || self.log());
        self.port = port;
        self.child = child;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }

    /// SIGKILLs the gateway.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Stops it with SIGTERM and checks that it exited cleanly.
    pub fn stop(&mut self) {
        let status = self.child.terminate();
        assert!(status.success(), "nfs serve exited with {status}: {}", self.log());
    }

    /// Stops it with SIGINT (Ctrl-C) and checks that it exited cleanly.
    pub fn interrupt(&mut self) {
        let status = self.child.stop_with(libc::SIGINT);
        assert!(status.success(), "nfs serve exited with {status} on SIGINT: {}", self.log());
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(!self.child.is_running(), "stop it first");
        self.spawn();
    }

    /// A libnfs URL of `path` on this gateway over NFS `version` 3 or 4 (libnfs's NFSv4 is
    /// 4.0); `/` is the export, so a file in it is `//name`.
    pub fn url(&self, path: &str, version: u32) -> String {
        format!("nfs://127.0.0.1/{path}?version={version}&nfsport={0}&mountport={0}", self.port)
    }
}

pub type Client = Nfs3Client<TokioIo<TcpStream>>;

/// AUTH_SYS credentials for `uid`/`gid`.
pub fn auth(uid: u32, gid: u32) -> opaque_auth<'static> {
    auth_with_groups(uid, gid, &[gid])
}

/// AUTH_SYS credentials for `uid`/`gid` with supplementary `groups`.
pub fn auth_with_groups(uid: u32, gid: u32, groups: &[u32]) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(b"test-host".to_vec()),
        uid,
        gid,
        gids: groups.to_vec(),
    })
}

/// A TCP connection to the gateway, from `from` if given (127.0.0.2 is another client).
pub async fn connect(port: u16, from: Option<IpAddr>) -> std::io::Result<TokioIo<TcpStream>> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = match from {
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(to).await?
        }
        None => TcpStream::connect(to).await?,
    };
    Ok(TokioIo::new(stream))
}

/// MOUNT's handle for "/".
pub async fn mount_root<IO: AsyncRead + AsyncWrite + Send>(
    io: IO,
    cred: opaque_auth<'static>,
) -> Result<nfs_fh3, nfs3_client::MountError> {
    let mut mount = MountClient::new_with_auth(io, cred, opaque_auth::default());
    let ok = mount.mnt(dirpath(Opaque::borrowed(b"/"))).await?;
    Ok(nfs_fh3 { data: ok.fhandle.0 })
}

/// An NFS client acting as `uid`/`gid` and the export's root handle.
pub async fn client(port: u16, uid: u32, gid: u32) -> (Client, nfs_fh3) {
    client_with_groups(port, uid, gid, &[gid]).await
}

/// An NFS client acting as `uid`/`gid` with supplementary `groups`, and the export's root.
pub async fn client_with_groups(port: u16, uid: u32, gid: u32, groups: &[u32]) -> (Client, nfs_fh3) {
    let cred = auth_with_groups(uid, gid, groups);
    let root = mount_root(connect(port, None).await.unwrap(), cred.clone()).await.expect("MNT /");
    let nfs = Nfs3Client::new_with_auth(connect(port, None).await.unwrap(), cred, opaque_auth::default());
    (nfs, root)
}

/// The object a successful CREATE, MKDIR, SYMLINK or MKNOD made.
pub fn made(obj: post_op_fh3) -> nfs_fh3 {
    match obj {
        post_op_fh3::Some(fh) => fh,
        post_op_fh3::None => panic!("no handle returned"),
    }
}

pub fn name(n: &str) -> filename3<'static> {
    filename3(Opaque::owned(n.as_bytes().to_vec()))
}

pub fn at(dir: &nfs_fh3, n: &str) -> diropargs3<'static> {
    diropargs3 { dir: dir.clone(), name: name(n) }
}

/// Creates (UNCHECKED) a regular file with `mode`.
pub async fn create(nfs: &mut Client, dir: &nfs_fh3, n: &str, mode: u32) -> Result<nfs_fh3, nfsstat3> {
    let how = createhow3::UNCHECKED(sattr3 { mode: set_mode3::Some(mode), ..Default::default() });
    match nfs.create(&CREATE3args { where_: at(dir, n), how }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(made(ok.obj)),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

pub async fn lookup(nfs: &mut Client, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3, nfsstat3> {
    match nfs.lookup(&LOOKUP3args { what: at(dir, n) }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

pub async fn getattr(nfs: &mut Client, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    match nfs.getattr(&GETATTR3args { object: fh.clone() }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// Writes `data` at `offset` in 1 MiB WRITEs; returns the verifier of the last.
pub async fn write(
    nfs: &mut Client,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<writeverf3, nfsstat3> {
    let mut verf = writeverf3::default();
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        let args = WRITE3args {
            file: fh.clone(),
            offset: offset + (i << 20) as u64,
            count: piece.len() as u32,
            stable,
            data: Opaque::borrowed(piece),
        };
        match nfs.write(&args).await.unwrap() {
            Nfs3Result::Ok(ok) => {
                assert_eq!(ok.count as usize, piece.len());
                assert!(ok.committed as u32 >= stable as u32, "a WRITE came back less stable than asked");
                verf = ok.verf;
            }
            Nfs3Result::Err((s, _)) => return Err(s),
        }
    }
    Ok(verf)
}

pub async fn commit(nfs: &mut Client, fh: &nfs_fh3) -> Result<writeverf3, nfsstat3> {
    match nfs.commit(&COMMIT3args { file: fh.clone(), offset: 0, count: 0 }).await.unwrap() {
        Nfs3Result::Ok(ok) => Ok(ok.verf),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// The whole file, in READs of `chunk` bytes, checking the EOF flag.
pub async fn read_all(nfs: &mut Client, fh: &nfs_fh3, chunk: u32) -> Result<Vec<u8>, nfsstat3> {
    let mut out = Vec::new();
    loop {
        let args = READ3args { file: fh.clone(), offset: out.len() as u64, count: chunk };
        match nfs.read(&args).await.unwrap() {
            Nfs3Result::Ok(ok) => {
                out.extend_from_slice(ok.data.as_ref());
                if ok.eof {
                    return Ok(out);
                }
                assert!(ok.count > 0, "a READ short of EOF returned nothing");
            }
            Nfs3Result::Err((s, _)) => return Err(s),
        }
    }
}

/// Every name in a directory through READDIR pages of at most `count` bytes.
pub async fn readdir_names(nfs: &mut Client, dir: &nfs_fh3, count: u32) -> Vec<String> {
    let (mut names, mut cookie) = (Vec::new(), 0);
    loop {
        let args = READDIR3args { dir: dir.clone(), cookie, cookieverf: cookieverf3::default(), count };
        let ok = nfs.readdir(&args).await.unwrap().unwrap();
        for entry in ok.reply.entries.0 {
            names.push(String::from_utf8(entry.name.0.to_vec()).unwrap());
            cookie = entry.cookie;
        }
        if ok.reply.eof {
            return names;
        }
    }
}

/// Every (name, fileid, handle present) through READDIRPLUS pages.
pub async fn readdirplus_names(
    nfs: &mut Client,
    dir: &nfs_fh3,
    dircount: u32,
    maxcount: u32,
) -> Vec<(String, u64)> {
    let (mut names, mut cookie) = (Vec::new(), 0);
    loop {
        let args = READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: cookieverf3::default(),
            dircount,
            maxcount,
        };
        let ok = nfs.readdirplus(&args).await.unwrap().unwrap();
        for entry in ok.reply.entries.0 {
            assert!(
                entry.name_attributes.is_some() && entry.name_handle.is_some(),
                "entry without attributes"
            );
            names.push((String::from_utf8(entry.name.0.to_vec()).unwrap(), entry.fileid));
            cookie = entry.cookie;
        }
        if ok.reply.eof {
            return names;
        }
    }
}

/// The whole of file `name` in the export's root, read as root through a new client.
pub async fn read_back(port: u16, name: &str) -> Vec<u8> {
    let (mut nfs, root) = client(port, 0, 0).await;
    let file = lookup(&mut nfs, &root, name).await.unwrap();
    read_all(&mut nfs, &file, 1 << 20).await.unwrap()
}
