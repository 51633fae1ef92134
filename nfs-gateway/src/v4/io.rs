//! Opens and data: OPEN, OPEN_CONFIRM, OPEN_DOWNGRADE, CLOSE, READ, WRITE and COMMIT.
//!
//! An open holds the gateway's engine handle of its file (the one NFSv3 calls use too), so
//! unstable writes wait in it for COMMIT or the last CLOSE, which commits them: what one
//! client wrote and closed is what the next one to open the file reads, through any frontend.

use std::sync::Arc;

use elasticfs_core::metadata::{Attr, FileKind};
use elasticfs_core::{CreateMode, MAY_READ, MAY_WRITE};

use super::attrs::{self, SetRequest};
use super::state::{OwnerSeq, Stateid};
use super::status::{OpResult, Status};
use super::xdr::{Bitmap, Reader, Writer};
use super::{change_info, new_component, put_stateid, stateid, Compound};
use crate::checks;
use crate::nfs::MAX_IO;
use crate::open_files::OpenHandle;

const SHARE_ACCESS_READ: u32 = 1;
pub(super) const SHARE_ACCESS_WRITE: u32 = 2;
/// NFSv4.1 carries delegation wishes in the bits above the access mode; none is granted.
const SHARE_ACCESS_MASK: u32 = 3;
const OPEN4_RESULT_LOCKTYPE_POSIX: u32 = 4;
const OPEN_DELEGATE_NONE: u32 = 0;
const UNSTABLE4: u32 = 0;
const FILE_SYNC4: u32 = 2;

/// A retransmitted NFSv4.0 request's earlier reply.
pub(super) struct Replay {
    status: Status,
    body: Vec<u8>,
}

impl Replay {
    /// Answers with the earlier reply: its body, and its status.
    pub(super) fn answer(self, w: &mut Writer) -> OpResult {
        if self.status == Status::OK {
            w.fixed(&self.body);
            Ok(())
        } else {
            Err(super::status::Fail { status: self.status, body: self.body })
        }
    }
}

/// How an OPEN asked for its file to be created.
enum How {
    Unchecked(SetRequest),
    Guarded(SetRequest),
    Exclusive([u8; 8], Option<SetRequest>),
}

/// The file an OPEN names.
enum Claim<'a> {
    /// A name in the current directory.
    Name(&'a [u8]),
    /// The current file handle (4.1's CLAIM_FH).
    Current,
    /// The current file handle, reclaimed after a restart (CLAIM_PREVIOUS).
    Previous,
}

impl Compound<'_> {
    /// The open-owner's client: its session's in 4.1, the one it names (confirmed) in 4.0.
    pub(super) fn owner_client(&self, named: u64) -> OpResult<u64> {
        if let Some(client) = self.session_client() {
            return Ok(client);
        }
        self.gw.v4.with_client(named, |c| {
            if c.confirmed {
                Ok(())
            } else {
                Err(Status::STALE_CLIENTID.into())
            }
        })?;
        Ok(named)
    }

    /// NFSv4.0's owner sequences: each request of an open-owner or lock-owner carries the next
    /// seqid; the last one again is a retransmission, answered with the reply it got (`Some`);
    /// any other is BAD_SEQID. The reply of a new request is kept when the COMPOUND driver
    /// has it (see `Compound::sequenced`).
    pub(super) fn owner_seqid(&mut self, client: u64, owner: &[u8], seqid: u32) -> OpResult<Option<Replay>> {
        if self.minor >= 1 {
            return Ok(None);
        }
        let replay = self.gw.v4.with_client(client, |c| {
            if !c.owners.contains_key(owner) && c.owners.len() >= super::state::MAX_OPENS_PER_CLIENT {
                return Err(Status::RESOURCE.into());
            }
            let seq = c
                .owners
                .entry(owner.to_vec())
                .or_insert(OwnerSeq { seqid: seqid.wrapping_sub(1), reply: None });
            if seqid == seq.seqid {
                return match &seq.reply {
                    Some((status, body)) => Ok(Some(Replay { status: *status, body: body.clone() })),
                    None => Err(Status::BAD_SEQID.into()),
                };
            }
            if seqid != seq.seqid.wrapping_add(1) {
                return Err(Status::BAD_SEQID.into());
            }
            seq.seqid = seqid;
            seq.reply = None;
            Ok(None)
        })?;
        if replay.is_none() {
            self.sequenced = Some((client, owner.to_vec()));
        }
        Ok(replay)
    }

    pub(super) fn open(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let seqid = r.u32()?;
        let access = r.u32()? & SHARE_ACCESS_MASK;
        let deny = r.u32()?;
        let named_client = r.u64()?;
        let owner = r.opaque(1024)?;
        let how = match r.u32()? {
            0 => None,
            1 => Some(match r.u32()? {
                0 => How::Unchecked(attrs::decode_set(r)?),
                1 => How::Guarded(attrs::decode_set(r)?),
                2 => How::Exclusive(r.fixed()?, None),
                3 if self.minor >= 1 => How::Exclusive(r.fixed()?, Some(attrs::decode_set(r)?)),
                _ => return Err(Status::INVAL.into()),
            }),
            _ => return Err(Status::INVAL.into()),
        };
        let claim = match r.u32()? {
            0 => Claim::Name(new_component(r)?),
            // CLAIM_PREVIOUS: an open the client held before the gateway restarted, of the
            // current file handle, without a delegation (none is ever granted).
            1 => match r.u32()? {
                0 => Claim::Previous,
                _ => return Err(Status::RECLAIM_BAD.into()),
            },
            4 if self.minor >= 1 => Claim::Current,
            // No delegation is ever granted to claim through.
            5 | 6 => return Err(Status::NO_GRACE.into()),
            2 | 3 => return Err(Status::BAD_STATEID.into()),
            _ => return Err(Status::INVAL.into()),
        };
        self.may_take_state(matches!(claim, Claim::Previous))?;
        if access == 0 || deny > 3 {
            return Err(Status::INVAL.into());
        }
        let client = self.owner_client(named_client)?;
        if let Some(replay) = self.owner_seqid(client, owner, seqid)? {
            return replay.answer(w);
        }

        let (dir, opened) = match claim {
            Claim::Current | Claim::Previous => {
                let file = self.current()?;
                (None, Opened { file, fh: None, attrset: Bitmap::default(), created: false })
            }
            Claim::Name(name) => {
                let dir = self.current_dir()?;
                if !self.who.may(&dir, elasticfs_core::MAY_EXEC) {
                    return Err(Status::ACCESS.into());
                }
                let opened = match how {
                    None => {
                        let file = self.gw.fs.lookup(dir.ino, name)?;
                        Opened { file, fh: None, attrset: Bitmap::default(), created: false }
                    }
                    Some(how) => self.open_create(&dir, name, how)?,
                };
                (Some(dir), opened)
            }
        };
        let file = opened.file;
        match file.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(Status::ISDIR.into()),
            FileKind::Symlink => return Err(Status::SYMLINK.into()),
            _ if self.minor >= 1 => return Err(Status::WRONG_TYPE.into()),
            // 4.0 has no error for other kinds; Linux's server answers SYMLINK, which makes
            // its client do the right thing, and pynfs expects it.
            _ => return Err(Status::SYMLINK.into()),
        }
        // Whoever just made the file may open it as asked whatever its mode says (as
        // open(2) with O_CREAT does).
        if !opened.created {
            let mut want = 0;
            if access & SHARE_ACCESS_READ != 0 {
                want |= MAY_READ;
            }
            if access & SHARE_ACCESS_WRITE != 0 {
                self.writable()?;
                want |= MAY_WRITE;
            }
            checks::data_file(self.who, &file, want)?;
        }
        let handle: Arc<OpenHandle> = match opened.fh {
            Some(fh) => self.gw.open.adopt(file.ino, fh),
            None => self.gw.open.get(file.ino)?,
        };
        // What others committed since this gateway opened the file (close-to-open).
        self.gw.fs.revalidate(handle.fh, &file)?;
        let id = self.gw.v4.open(client, owner, file.ino, access, deny, handle)?;

        put_stateid(w, &id);
        match &dir {
            Some(dir) => change_info(w, dir, self.gw.fs.getattr(dir.ino).ok().as_ref()),
            None => change_info(w, &file, None),
        }
        w.u32(OPEN4_RESULT_LOCKTYPE_POSIX);
        w.bitmap(&opened.attrset);
        w.u32(OPEN_DELEGATE_NONE);
        self.set_current(&file);
        self.current_stateid = Some(id);
        Ok(())
    }

    /// An OPEN that may create: what it opens.
    fn open_create(&self, dir: &Attr, name: &[u8], how: How) -> OpResult<Opened> {
        let (set, exclusive) = match how {
            How::Exclusive(verifier, set) => return self.open_exclusive(dir, name, verifier, set),
            How::Unchecked(set) => (set, false),
            How::Guarded(set) => (set, true),
        };
        let mode = set.req.perm.unwrap_or(0o644);
        match self.create_file(dir, name, mode, CreateMode::Exclusive) {
            Ok((made, fh)) => {
                let made = self.apply_create_attrs(made, &set)?;
                Ok(Opened { file: made, fh: Some(fh), attrset: set.names, created: true })
            }
            Err(fail) if fail.status == Status::EXIST && !exclusive => {
                // UNCHECKED opens what is there; of the attributes only a size of 0 applies.
                let existing = self.gw.fs.lookup(dir.ino, name)?;
                let mut attrset = Bitmap::default();
                if set.req.size == Some(0) && existing.kind == FileKind::File {
                    let req = elasticfs_core::SetAttrRequest { size: Some(0), ..Default::default() };
                    let truncated = checks::setattr(&self.gw.fs, self.who, &existing, &req, false)?;
                    attrset.insert(attrs::SIZE);
                    return Ok(Opened { file: truncated, fh: None, attrset, created: false });
                }
                Ok(Opened { file: existing, fh: None, attrset, created: false })
            }
            Err(fail) => Err(fail),
        }
    }

    /// EXCLUSIVE4 (and 4.1's EXCLUSIVE4_1, with attributes): the verifier is kept in the
    /// file's times, so a retransmitted OPEN finds its own file. The times are left for the
    /// client to set (they are not in `suppattr_exclcreat`).
    fn open_exclusive(
        &self,
        dir: &Attr,
        name: &[u8],
        verifier: [u8; 8],
        set: Option<SetRequest>,
    ) -> OpResult<Opened> {
        self.writable()?;
        checks::may_change_dir(self.who, dir)?;
        let made = checks::create_exclusive(&self.gw.fs, &self.gw.open, self.who, dir.ino, name, verifier)?;
        let Some(set) = set else {
            return Ok(Opened { file: made, fh: None, attrset: Bitmap::default(), created: true });
        };
        let mut req = set.req.clone();
        req.atime = None;
        req.mtime = None;
        let mut attrset = set.names.clone();
        attrset.remove(attrs::TIME_ACCESS_SET);
        attrset.remove(attrs::TIME_MODIFY_SET);
        let made = checks::setattr(&self.gw.fs, self.who, &made, &req, true)?;
        Ok(Opened { file: made, fh: None, attrset, created: true })
    }
}

/// What an OPEN opened: the file, the engine handle made by creating it, the attributes set,
/// and whether it was made by this OPEN.
struct Opened {
    file: Attr,
    fh: Option<u64>,
    attrset: Bitmap,
    created: bool,
}

/// READ, WRITE and COMMIT are for regular files.
fn regular_file(attr: &Attr) -> OpResult {
    match attr.kind {
        FileKind::File => Ok(()),
        FileKind::Dir => Err(Status::ISDIR.into()),
        _ => Err(Status::INVAL.into()),
    }
}

/// The handle a READ or WRITE goes through, and whether an open (rather than a special
/// stateid) stands behind it.
struct Access {
    handle: Arc<OpenHandle>,
    opened: bool,
}

impl Compound<'_> {
    /// A stateid from the wire, with 4.1's "current stateid" replaced by the COMPOUND's.
    pub(super) fn real_stateid(&self, id: Stateid) -> OpResult<Stateid> {
        if self.minor >= 1 && id == Stateid::CURRENT {
            return self.current_stateid.ok_or_else(|| Status::BAD_STATEID.into());
        }
        Ok(id)
    }

    /// The open a READ or WRITE names, for file `attr`: an open with `want` access, or a
    /// special stateid, for which the caller's permission is checked as for NFSv3.
    fn data_access(&self, id: Stateid, attr: &Attr, want: u32) -> OpResult<Access> {
        Ok(match self.stateid_access(id, attr, want)? {
            Some(handle) => Access { handle, opened: true },
            None => Access { handle: self.gw.open.get(attr.ino)?, opened: false },
        })
    }

    /// Checks that stateid `id` may read or write (`want`) file `attr`, as READ and WRITE
    /// and a SETATTR of the size need: the engine handle of the open it names, or `None` for
    /// a special stateid (outside any open).
    pub(super) fn stateid_access(
        &self,
        id: Stateid,
        attr: &Attr,
        want: u32,
    ) -> OpResult<Option<Arc<OpenHandle>>> {
        let id = self.real_stateid(id)?;
        if id.is_special() {
            let may = if want == SHARE_ACCESS_WRITE { MAY_WRITE } else { MAY_READ };
            checks::data_file(self.who, attr, may)?;
            // Share reservations hold off I/O outside any open, except reads through the
            // read-bypass stateid (all ones), as RFC 7530 section 9.1.4.3 allows.
            let bypass = want == SHARE_ACCESS_READ && id.other == [0xff; 12];
            if !bypass && self.gw.v4.denied(attr.ino, want) {
                return Err(Status::LOCKED.into());
            }
            return Ok(None);
        }
        let handle = self.gw.v4.with_io_open(&id, self.minor, |open| {
            if open.ino != attr.ino {
                return Err(Status::BAD_STATEID.into());
            }
            // Reading through a write-only open is allowed, as Linux's server allows it.
            if want == SHARE_ACCESS_WRITE && open.access & SHARE_ACCESS_WRITE == 0 {
                return Err(Status::OPENMODE.into());
            }
            Ok(open.handle.clone())
        })?;
        Ok(Some(handle))
    }

    pub(super) fn read(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let id = stateid(r)?;
        let offset = r.u64()?;
        let mut count = r.u32()?.min(MAX_IO);
        if let Some(s) = &self.session {
            // Within the session's largest reply, with room for the COMPOUND around it (about
            // 100 bytes and the tag; half of a session smaller than 2 KiB).
            let max = s.session.max_response;
            count = count.min(max - 1024.min(max / 2));
        }
        let attr = self.current()?;
        regular_file(&attr)?;
        let access = self.data_access(id, &attr, SHARE_ACCESS_READ)?;
        if !access.opened {
            self.gw.fs.revalidate(access.handle.fh, &attr)?;
        }
        let attr = self.gw.fs.with_local_changes(attr);
        let data = self.gw.fs.read(access.handle.fh, offset, count)?;
        w.bool(offset.saturating_add(data.len() as u64) >= attr.size);
        w.data_pieces(data.into_pieces());
        Ok(())
    }

    pub(super) fn write(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let id = stateid(r)?;
        let offset = r.u64()?;
        let stable = r.u32()?;
        let data = r.opaque(MAX_IO as usize)?;
        self.writable()?;
        let attr = self.current()?;
        regular_file(&attr)?;
        let access = self.data_access(id, &attr, SHARE_ACCESS_WRITE)?;
        self.gw.fs.drop_privileges_for_write(attr, self.who)?;
        self.gw.fs.write(access.handle.fh, offset, data)?;
        // UNSTABLE data waits for COMMIT or the last CLOSE; anything else is durable before
        // the reply, so that no reply claims more than is true.
        let committed = if stable == UNSTABLE4 {
            UNSTABLE4
        } else {
            self.gw.fs.fsync(access.handle.fh)?;
            FILE_SYNC4
        };
        w.u32(data.len() as u32);
        w.u32(committed);
        w.fixed(&self.gw.write_verifier().0);
        Ok(())
    }

    pub(super) fn commit(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let _offset = r.u64()?;
        let _count = r.u32()?;
        let attr = self.current()?;
        regular_file(&attr)?;
        // Without a handle there is nothing uncommitted: closing it committed it, or (if
        // that failed) changed the verifier, so that the client writes again.
        if let Some(handle) = self.gw.open.existing(attr.ino) {
            self.gw.fs.fsync(handle.fh)?;
        }
        w.fixed(&self.gw.write_verifier().0);
        Ok(())
    }

    pub(super) fn close(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let seqid = r.u32()?;
        let id = self.real_stateid(stateid(r)?)?;
        let owner = self.gw.v4.with_open(&id, self.minor, |o| Ok((o.client, o.owner.clone())));
        let (client, owner) = match (owner, self.minor) {
            (Ok(owner), _) => owner,
            // A retransmitted 4.0 CLOSE names an open that is gone: its owner's last reply.
            (Err(fail), 0) => self.gw.v4.closed_owner(&id).ok_or(fail)?,
            (Err(fail), _) => return Err(fail),
        };
        if let Some(replay) = self.owner_seqid(client, &owner, seqid)? {
            return replay.answer(w);
        }
        let (open, locks) = self.gw.v4.close(&id, self.minor)?;
        let ino = open.ino;
        drop(open);
        // Locks taken through the open go with it (RFC 8881 section 18.2.4 lets a server
        // release them rather than refuse the CLOSE).
        self.gw.release_locks(locks);
        // The last open of the file here: its handle closes, committing what was written. If
        // that fails, unstable writes are lost: the verifier changes, as for NFSv3.
        if !self.gw.v4.is_open(ino) {
            self.gw.open.close(ino).inspect_err(|_| self.gw.writes_lost())?;
        }
        // RFC 8881 section 18.2.4: a CLOSE's stateid is meaningless; 4.0 clients get the
        // next seqid.
        put_stateid(
            w,
            &Stateid {
                seqid: id.seqid.wrapping_add(1),
                other: if self.minor >= 1 { [0; 12] } else { id.other },
            },
        );
        Ok(())
    }

    /// NFSv4.0's OPEN_CONFIRM (never asked for: OPEN does not set OPEN4_RESULT_CONFIRM, but
    /// a client may send it all the same).
    pub(super) fn open_confirm(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let id = stateid(r)?;
        let seqid = r.u32()?;
        let (client, owner) = self.gw.v4.with_open(&id, 0, |o| Ok((o.client, o.owner.clone())))?;
        if let Some(replay) = self.owner_seqid(client, &owner, seqid)? {
            return replay.answer(w);
        }
        let next = self.gw.v4.with_open(&id, 0, |o| {
            o.seqid = o.seqid.wrapping_add(1);
            Ok(Stateid { seqid: o.seqid, other: id.other })
        })?;
        put_stateid(w, &next);
        Ok(())
    }

    pub(super) fn open_downgrade(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let id = self.real_stateid(stateid(r)?)?;
        let seqid = r.u32()?;
        let access = r.u32()? & SHARE_ACCESS_MASK;
        let deny = r.u32()?;
        let (client, owner) = self.gw.v4.with_open(&id, self.minor, |o| Ok((o.client, o.owner.clone())))?;
        if let Some(replay) = self.owner_seqid(client, &owner, seqid)? {
            return replay.answer(w);
        }
        let next = self.gw.v4.with_open(&id, self.minor, |o| {
            // Only to modes the open already has.
            if access == 0 || access & !o.access != 0 || deny & !o.deny != 0 {
                return Err(Status::INVAL.into());
            }
            o.access = access;
            o.deny = deny;
            o.seqid = o.seqid.wrapping_add(1);
            Ok(Stateid { seqid: o.seqid, other: id.other })
        })?;
        put_stateid(w, &next);
        self.current_stateid = Some(next);
        Ok(())
    }
}
