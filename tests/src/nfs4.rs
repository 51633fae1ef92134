//! A small NFSv4 COMPOUND client (4.0, and 4.1's session operations) over a blocking TCP
//! stream, for what the `nfs-rs` client does not let a test send: forged stateids and handles,
//! unknown operations, truncated and random COMPOUNDs, other principals. Results are decoded
//! for the operations it sends.

use std::io::{Read, Write};
use std::net::TcpStream;

use futures::StreamExt;
use nfs_rs::Mount;

/// An `nfs-rs` NFSv4.1 mount of the gateway on `port`, as root.
pub async fn mount41(port: u16) -> Box<dyn Mount> {
    let url = format!("nfs://127.0.0.1/?version=4.1&nfsport={port}&noresvport=true&uid=0&gid=0");
    nfs_rs::parse_url_and_mount(&url).await.expect("NFSv4.1 mount")
}

/// The names READDIR lists in `dir`, sorted.
pub async fn names(m: &dyn Mount, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = m.readdir_path(dir).await.unwrap();
    while let Some(entry) = stream.next().await {
        out.push(entry.unwrap().file_name);
    }
    out.sort();
    out
}

/// One operation, with its arguments.
pub enum Op {
    PutRootFh,
    PutFh(Vec<u8>),
    GetFh,
    Lookup(String),
    SetClientId(String),
    SetClientIdConfirm(u64, [u8; 8]),
    /// OPEN of a name in the current directory (created UNCHECKED if `create`), for reading
    /// and writing and denying `deny` (OPEN4_SHARE_DENY_*), by open-owner `owner` of `client`
    /// at `seqid`.
    Open {
        client: u64,
        owner: String,
        seqid: u32,
        name: String,
        deny: u32,
        create: bool,
    },
    Close {
        seqid: u32,
        stateid: [u8; 16],
    },
    Read {
        stateid: [u8; 16],
        offset: u64,
        count: u32,
    },
    Write {
        stateid: [u8; 16],
        offset: u64,
        stable: Stable,
        data: Vec<u8>,
    },
    /// COMMIT of the whole file.
    Commit,
    /// OPEN (CLAIM_PREVIOUS) of the current file handle, reclaiming an open after a restart.
    OpenPrevious {
        client: u64,
        owner: String,
        seqid: u32,
    },
    /// A write lock on the whole file by a new lock-owner `owner`, through an open (a reclaim
    /// after a restart if `reclaim`).
    Lock {
        client: u64,
        owner: String,
        open_seqid: u32,
        open_stateid: [u8; 16],
        reclaim: bool,
    },
    /// LOCKT of a write lock on the whole file for lock-owner `owner`.
    Lockt {
        client: u64,
        owner: String,
    },
    /// LOCKU of the whole file.
    Locku {
        seqid: u32,
        stateid: [u8; 16],
    },
    /// RENEW of a client's lease.
    Renew(u64),
    /// NFSv4.1's EXCHANGE_ID with `flags`, no state protection and no implementation id.
    ExchangeId {
        owner: String,
        verifier: [u8; 8],
        flags: u32,
    },
    /// NFSv4.1's CREATE_SESSION asking for 8 slots and these sizes on the fore channel.
    CreateSession {
        client: u64,
        sequence: u32,
        flags: u32,
        max_request: u32,
        max_response: u32,
        max_cached: u32,
    },
    /// NFSv4.1's SEQUENCE.
    Sequence {
        session: [u8; 16],
        seqid: u32,
        slot: u32,
        cache: bool,
    },
    /// Any operation number with arguments packed by the caller.
    Raw(u32, Vec<u8>),
}

/// How durable a WRITE must be when its reply comes (stable_how4).
#[derive(Clone, Copy)]
pub enum Stable {
    Unstable = 0,
    FileSync = 2,
}

/// What a result carried that the tests use.
#[derive(Debug, Default)]
pub struct OpResult {
    pub op: u32,
    pub status: u32,
    pub fh: Vec<u8>,
    pub stateid: [u8; 16],
    pub clientid: u64,
    pub verifier: [u8; 8],
    /// EXCHANGE_ID's next CREATE_SESSION sequence id.
    pub sequence: u32,
    pub session: [u8; 16],
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u32,
    pub results: Vec<OpResult>,
}

impl Reply {
    pub fn last(&self) -> &OpResult {
        self.results.last().expect("a result")
    }
}

fn put_opaque(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u32).to_be_bytes());
    out.extend(bytes);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn words(out: &mut Vec<u8>, ws: &[u32]) {
    for w in ws {
        out.extend(w.to_be_bytes());
    }
}

impl Op {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::PutRootFh => words(out, &[24]),
            Op::PutFh(fh) => {
                words(out, &[22]);
                put_opaque(out, fh);
            }
            Op::GetFh => words(out, &[10]),
            Op::Lookup(name) => {
                words(out, &[15]);
                put_opaque(out, name.as_bytes());
            }
            Op::SetClientId(owner) => {
                words(out, &[35]);
                out.extend([7u8; 8]);
                put_opaque(out, owner.as_bytes());
                words(out, &[0x4000_0000]);
                put_opaque(out, b"tcp");
                put_opaque(out, b"127.0.0.1.0.0");
                words(out, &[1]);
            }
            Op::SetClientIdConfirm(id, verifier) => {
                words(out, &[36]);
                out.extend(id.to_be_bytes());
                out.extend(verifier);
            }
            Op::Open { client, owner, seqid, name, deny, create } => {
                // seqid, BOTH access, the deny bits, the owner.
                words(out, &[18, *seqid, 3, *deny]);
                out.extend(client.to_be_bytes());
                put_opaque(out, owner.as_bytes());
                if *create {
                    // OPEN4_CREATE, UNCHECKED4, no attributes.
                    words(out, &[1, 0, 0, 0]);
                } else {
                    words(out, &[0]);
                }
                words(out, &[0]); // CLAIM_NULL
                put_opaque(out, name.as_bytes());
            }
            Op::Close { seqid, stateid } => {
                words(out, &[4, *seqid]);
                out.extend(stateid);
            }
            Op::Read { stateid, offset, count } => {
                words(out, &[25]);
                out.extend(stateid);
                out.extend(offset.to_be_bytes());
                words(out, &[*count]);
            }
            Op::Write { stateid, offset, stable, data } => {
                words(out, &[38]);
                out.extend(stateid);
                out.extend(offset.to_be_bytes());
                words(out, &[*stable as u32]);
                put_opaque(out, data);
            }
            Op::Commit => {
                words(out, &[5, 0, 0, 0]);
            }
            Op::OpenPrevious { client, owner, seqid } => {
                words(out, &[18, *seqid, 3, 0]);
                out.extend(client.to_be_bytes());
                put_opaque(out, owner.as_bytes());
                // OPEN4_NOCREATE, CLAIM_PREVIOUS with no delegation.
                words(out, &[0, 1, 0]);
            }
            Op::Lock { client, owner, open_seqid, open_stateid, reclaim } => {
                // WRITE_LT, offset 0, length "to the end", a new lock-owner.
                words(out, &[12, 2, u32::from(*reclaim), 0, 0, u32::MAX, u32::MAX, 1, *open_seqid]);
                out.extend(open_stateid);
                words(out, &[0]); // the lock-owner's first seqid
                out.extend(client.to_be_bytes());
                put_opaque(out, owner.as_bytes());
            }
            Op::Lockt { client, owner } => {
                words(out, &[13, 2, 0, 0, u32::MAX, u32::MAX]);
                out.extend(client.to_be_bytes());
                put_opaque(out, owner.as_bytes());
            }
            Op::Locku { seqid, stateid } => {
                words(out, &[14, 2, *seqid]);
                out.extend(stateid);
                words(out, &[0, 0, u32::MAX, u32::MAX]);
            }
            Op::Renew(client) => {
                words(out, &[30]);
                out.extend(client.to_be_bytes());
            }
            Op::ExchangeId { owner, verifier, flags } => {
                words(out, &[42]);
                out.extend(verifier);
                put_opaque(out, owner.as_bytes());
                words(out, &[*flags, 0, 0]); // SP4_NONE, no implementation id
            }
            Op::CreateSession { client, sequence, flags, max_request, max_response, max_cached } => {
                words(out, &[43]);
                out.extend(client.to_be_bytes());
                words(out, &[*sequence, *flags]);
                words(out, &[0, *max_request, *max_response, *max_cached, 16, 8, 0]);
                words(out, &[0, 4096, 4096, 0, 2, 1, 0]); // the back channel
                words(out, &[0x4000_0000, 1, 0]); // a callback program, AUTH_NONE
            }
            Op::Sequence { session, seqid, slot, cache } => {
                words(out, &[53]);
                out.extend(session);
                words(out, &[*seqid, *slot, *slot, u32::from(*cache)]);
            }
            Op::Raw(op, args) => {
                words(out, &[*op]);
                out.extend(args);
            }
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_be_bytes(head.try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let padded = n.next_multiple_of(4);
        let out = self.0[..n].to_vec();
        self.0 = &self.0[padded..];
        out
    }
    fn opaque(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        self.bytes(n)
    }
    fn skip_bitmap(&mut self) {
        let n = self.u32() as usize;
        self.bytes(4 * n);
    }
}

/// Decodes the body of a successful result of operation `op`; false if it is not one this
/// client knows (the rest of the reply is then not decoded).
fn decode_body(op: u32, c: &mut Cursor<'_>, r: &mut OpResult) -> bool {
    match op {
        22 | 24 | 15 | 36 | 30 | 13 => {}
        10 => r.fh = c.opaque(),
        35 => {
            r.clientid = c.u64();
            r.verifier = c.bytes(8).try_into().unwrap();
        }
        18 => {
            r.stateid = c.bytes(16).try_into().unwrap();
            c.bytes(20); // change_info4
            c.u32(); // rflags
            c.skip_bitmap();
            assert_eq!(c.u32(), 0, "no delegation");
        }
        4 | 12 | 14 | 21 => r.stateid = c.bytes(16).try_into().unwrap(),
        25 => {
            c.u32(); // eof
            r.data = c.opaque();
        }
        38 => {
            c.u32(); // count
            c.u32(); // committed
            r.verifier = c.bytes(8).try_into().unwrap();
        }
        5 => r.verifier = c.bytes(8).try_into().unwrap(),
        42 => {
            r.clientid = c.u64();
            r.sequence = c.u32();
            c.u32(); // flags
            c.u32(); // SP4_NONE
            c.u64(); // server owner: minor id
            c.opaque(); // major id
            c.opaque(); // scope
            for _ in 0..c.u32() {
                c.opaque();
                c.opaque();
                c.u64();
                c.u32();
            }
        }
        43 => {
            r.session = c.bytes(16).try_into().unwrap();
            c.bytes(8); // sequence, flags
            for _ in 0..2 {
                c.bytes(24);
                let rdma = c.u32() as usize;
                c.bytes(4 * rdma);
            }
        }
        53 => {
            r.session = c.bytes(16).try_into().unwrap();
            c.bytes(20);
        }
        _ => return false,
    }
    true
}

/// A connection to the gateway speaking NFSv4 COMPOUNDs (as root, AUTH_SYS 0/0, unless made
/// with [`Wire::connect_as`]).
pub struct Wire {
    stream: TcpStream,
    xid: u32,
    uid: u32,
}

impl Wire {
    pub fn connect(port: u16) -> Wire {
        Wire::connect_as(port, 0)
    }

    /// A connection whose calls carry AUTH_SYS uid and gid `uid`.
    pub fn connect_as(port: u16, uid: u32) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        Wire { stream, xid: 1, uid }
    }

    /// Sends COMPOUND arguments as given (after the RPC header) and returns the reply from
    /// its accept status on, or `None` if the gateway closed the connection.
    pub fn raw(&mut self, args: &[u8]) -> Option<Vec<u8>> {
        self.xid += 1;
        let mut body = Vec::new();
        // CALL, RPC 2, NFS 4, COMPOUND, AUTH_SYS of 24 bytes (stamp, "t", uid, gid, no
        // groups), a null verifier.
        words(&mut body, &[self.xid, 0, 2, 100_003, 4, 1, 1, 24, 0]);
        put_opaque(&mut body, b"t");
        words(&mut body, &[self.uid, self.uid, 0, 0, 0]);
        body.extend(args);
        let mut record = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
        record.extend(body);
        self.stream.write_all(&record).ok()?;
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).ok()?;
        let mut reply = vec![0u8; (u32::from_be_bytes(header) & 0x7fff_ffff) as usize];
        self.stream.read_exact(&mut reply).ok()?;
        // xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty body), then the accept status.
        Some(reply[20..].to_vec())
    }

    /// Runs `ops` as one COMPOUND of minor version `minor`.
    pub fn call(&mut self, minor: u32, ops: &[Op]) -> Reply {
        let mut args = Vec::new();
        put_opaque(&mut args, b"test");
        words(&mut args, &[minor, ops.len() as u32]);
        for op in ops {
            op.encode(&mut args);
        }
        let reply = self.raw(&args).expect("a reply");
        let mut c = Cursor(&reply);
        assert_eq!(c.u32(), 0, "the call was accepted with SUCCESS");
        let status = c.u32();
        c.opaque(); // tag
        let count = c.u32();
        let mut results = Vec::new();
        for _ in 0..count {
            let mut r = OpResult { op: c.u32(), status: c.u32(), ..Default::default() };
            let known = r.status != 0 || decode_body(r.op, &mut c, &mut r);
            results.push(r);
            if !known {
                break;
            }
        }
        Reply { status, results }
    }

    /// SETCLIENTID and its confirmation: a confirmed NFSv4.0 client id.
    pub fn client(&mut self, owner: &str) -> u64 {
        let set = self.call(0, &[Op::SetClientId(owner.into())]);
        assert_eq!(set.status, 0, "{set:?}");
        let (id, verifier) = (set.last().clientid, set.last().verifier);
        let confirmed = self.call(0, &[Op::SetClientIdConfirm(id, verifier)]);
        assert_eq!(confirmed.status, 0, "{confirmed:?}");
        id
    }
}
