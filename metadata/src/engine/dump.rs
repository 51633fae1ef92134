//! Moving a file system between stores (`elasticfs meta dump` and `meta load`): every record
//! of the key layout, streamed from one snapshot of the source and written into an empty
//! target, whatever the two drivers are (the layout is the same on all of them).
//!
//! The stream: the 16-byte magic (which carries the stream's version), then records, each a
//! key and a value with u32 little-endian lengths, then an end mark (a key length of
//! `u32::MAX`) and the number of records (u64 LE), so that a truncated stream is refused.
//! Records that belong to the clients of the source (sessions, locks, upload intents) and the
//! etcd driver's commit receipts are not carried.

use std::io::{Read, Write};

use super::Engine;
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::kv::{Kv, KvTxn, TxError};
use crate::types::{Superblock, FORMAT_VERSION};

const MAGIC: &[u8; 16] = b"elasticfs-dump\n\x01";
const END: u32 = u32::MAX;
/// Keys read per page of the dump.
const PAGE: usize = 1024;

/// Whether a record is part of the file system (rather than of its clients or driver).
fn carried(key: &[u8]) -> bool {
    !matches!(key.first(), Some(&keys::SESSION) | Some(&keys::LOCKS) | Some(&keys::INTENTS) | Some(b'z'))
}

fn io_error(what: &str, e: std::io::Error) -> MetaError {
    MetaError::Store(format!("{what}: {e}"))
}

impl<K: Kv> Engine<K> {
    /// Writes every record to `out`, from one snapshot of the store; `progress` hears the
    /// count of records written so far. Returns that count.
    pub fn dump(&self, out: &mut dyn Write, progress: &dyn Fn(u64)) -> MetaResult<u64> {
        out.write_all(MAGIC).map_err(|e| io_error("writing the dump", e))?;
        let mut written = 0u64;
        let mut body = |t: &mut dyn KvTxn| {
            let mut start = vec![0u8];
            let end = vec![0xffu8; 2];
            loop {
                let page = t.scan(&start, &end, PAGE)?;
                for (key, value) in page.iter().filter(|(k, _)| carried(k)) {
                    for part in [key, value] {
                        out.write_all(&(part.len() as u32).to_le_bytes())
                            .map_err(|e| io_error("writing the dump", e))?;
                        out.write_all(part).map_err(|e| io_error("writing the dump", e))?;
                    }
                    written += 1;
                }
                progress(written);
                match page.last() {
                    Some((last, _)) if page.len() == PAGE => start = [last.as_slice(), &[0]].concat(),
                    _ => return Ok(()),
                }
            }
        };
        // Not retried: half a stream is already out.
        self.shared.kv.snapshot(&mut body).map_err(|e| match e {
            TxError::Abort(e) => e,
            TxError::Conflict => MetaError::Store(
                "the store's snapshot went away during the dump (etcd compacted it): run the dump again"
                    .into(),
            ),
        })?;
        out.write_all(&END.to_le_bytes()).map_err(|e| io_error("writing the dump", e))?;
        out.write_all(&written.to_le_bytes()).map_err(|e| io_error("writing the dump", e))?;
        out.flush().map_err(|e| io_error("writing the dump", e))?;
        Ok(written)
    }

    /// Loads a dump into `kv`, which must hold no file system, and opens the result. The
    /// superblock is written last: a load that stops half-way leaves no file system (run it
    /// again).
    pub fn load_kv(kv: K, input: &mut dyn Read, progress: &dyn Fn(u64)) -> MetaResult<Self> {
        let mut magic = [0u8; 16];
        input.read_exact(&mut magic).map_err(|e| io_error("reading the dump", e))?;
        if &magic != MAGIC {
            return Err(MetaError::Format(
                "this is not an elasticfs metadata dump (or one of a newer version): make it with `elasticfs meta dump`".into(),
            ));
        }
        let batch = match kv.max_ops() {
            usize::MAX => 4096,
            ops => ops - 2,
        };
        let mut superblock = None;
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut count = 0u64;
        let flush = |pending: &mut Vec<(Vec<u8>, Vec<u8>)>| -> MetaResult<()> {
            let records = std::mem::take(pending);
            let mut body = |t: &mut dyn KvTxn| {
                for (k, v) in &records {
                    t.put(k, v);
                }
                Ok(())
            };
            kv.transact(&mut body).map_err(super::tx_error)
        };
        let mut checked_empty = false;
        while let Part::Bytes(key) = read_part(input)? {
            let Part::Bytes(value) = read_part(input)? else {
                return Err(truncated());
            };
            if !checked_empty {
                let mut present = false;
                kv.read(&mut |t: &mut dyn KvTxn| {
                    present = t.get(keys::SUPERBLOCK)?.is_some();
                    Ok(())
                })
                .map_err(super::tx_error)?;
                if present {
                    return Err(MetaError::Format(format!(
                        "{} already holds a file system: load into an empty store",
                        kv.describe()
                    )));
                }
                checked_empty = true;
            }
            count += 1;
            if key == keys::SUPERBLOCK {
                let sb: Superblock = serde_json::from_slice(&value)
                    .map_err(|e| MetaError::Format(format!("the dump's superblock is unreadable: {e}")))?;
                if sb.format_version > FORMAT_VERSION {
                    return Err(MetaError::Format(format!(
                        "the dump is of format version {}; this build reads up to {FORMAT_VERSION}: upgrade elasticfs",
                        sb.format_version
                    )));
                }
                superblock = Some(value);
                continue;
            }
            pending.push((key, value));
            if pending.len() >= batch {
                flush(&mut pending)?;
                progress(count);
            }
        }
        let mut expected = [0u8; 8];
        input.read_exact(&mut expected).map_err(|_| truncated())?;
        if u64::from_le_bytes(expected) != count {
            return Err(truncated());
        }
        let superblock =
            superblock.ok_or_else(|| MetaError::Format("the dump holds no superblock".into()))?;
        flush(&mut pending)?;
        pending.push((keys::SUPERBLOCK.to_vec(), superblock));
        flush(&mut pending)?;
        kv.sync()?;
        progress(count);
        Self::open_kv(kv)
    }
}

enum Part {
    Bytes(Vec<u8>),
    End,
}

fn read_part(input: &mut dyn Read) -> MetaResult<Part> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(|_| truncated())?;
    let len = u32::from_le_bytes(len);
    if len == END {
        return Ok(Part::End);
    }
    if len > 64 << 20 {
        return Err(MetaError::Format(format!("the dump holds a record of {len} bytes: it is damaged")));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes).map_err(|_| truncated())?;
    Ok(Part::Bytes(bytes))
}

fn truncated() -> MetaError {
    MetaError::Format(
        "the dump ends early: it was cut short (make it again with `elasticfs meta dump`)".into(),
    )
}
