//! Chunk lifetimes against garbage collection (DESIGN §6, invariant I).
//!
//! A chunk's object may be deleted only when nothing references it and nobody is about to.
//! "About to" is an *intent*: a session protects a chunk before it uploads it or relies on
//! it being stored (dedup), and its commit releases the intent once the reference is in.
//! Collection *condemns* chunks in a transaction that sees every reference and intent; while
//! a chunk is condemned nobody may protect it (they wait, then upload it again), so an
//! object is never deleted under a reference or an upload that was promised it.

use super::txn::Txn;
use super::Engine;
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::kv::{fail, Kv, TxResult};
use crate::session::SessionId;
use crate::store::ChunkProtection;
use crate::types::{ChunkHash, Timestamp};

/// Each session's count of intents on one chunk.
type Intents = Vec<(SessionId, u64)>;

fn decode_intents(raw: Option<Vec<u8>>) -> TxResult<Intents> {
    match raw {
        Some(v) => Ok(postcard::from_bytes(&v).map_err(MetaError::store)?),
        None => Ok(Vec::new()),
    }
}

fn encode_intents(intents: &Intents) -> TxResult<Vec<u8>> {
    Ok(postcard::to_allocvec(intents).map_err(MetaError::store)?)
}

impl Txn<'_> {
    fn has(&mut self, kind: u8, hash: &ChunkHash) -> TxResult<bool> {
        Ok(self.get(&keys::chunk(kind, hash))?.is_some())
    }

    /// Whether the metadata knows the chunk's object to be stored.
    fn is_stored(&mut self, hash: &ChunkHash) -> TxResult<bool> {
        Ok(self.has(keys::CHUNK_REFS, hash)? || self.has(keys::UNREFERENCED, hash)?)
    }

    fn intents(&mut self, hash: &ChunkHash) -> TxResult<Intents> {
        decode_intents(self.get(&keys::chunk(keys::INTENTS, hash))?)
    }

    fn put_intents(&mut self, hash: &ChunkHash, intents: &Intents) -> TxResult<()> {
        let key = keys::chunk(keys::INTENTS, hash);
        if intents.is_empty() {
            self.delete(&key);
        } else {
            self.put(&key, &encode_intents(intents)?);
        }
        Ok(())
    }

    pub(super) fn protect_chunk(&mut self, hash: &ChunkHash) -> TxResult<ChunkProtection> {
        if self.has(keys::CONDEMNED, hash)? {
            return Ok(ChunkProtection::Condemned);
        }
        let mut intents = self.intents(hash)?;
        let held_before = match intents.iter_mut().find(|(s, _)| *s == self.session) {
            Some((_, count)) => {
                *count += 1;
                true
            }
            None => {
                intents.push((self.session, 1));
                false
            }
        };
        self.put_intents(hash, &intents)?;
        Ok(if self.is_stored(hash)? {
            ChunkProtection::Stored
        } else if held_before {
            ChunkProtection::HeldBySession
        } else {
            ChunkProtection::New
        })
    }

    /// A first reference to a chunk must name one whose object is known to be stored, or one
    /// this session protected: anything else may have been collected.
    pub(super) fn check_protected(&mut self, hash: &ChunkHash) -> TxResult<()> {
        if self.has(keys::CONDEMNED, hash)? {
            return fail(MetaError::ChunkUnprotected(*hash));
        }
        if self.has(keys::UNREFERENCED, hash)? {
            return Ok(());
        }
        let session = self.session;
        if self.intents(hash)?.iter().any(|(s, _)| *s == session) {
            return Ok(());
        }
        fail(MetaError::ChunkUnprotected(*hash))
    }

    pub(super) fn release_intent(&mut self, hash: &ChunkHash) -> TxResult<()> {
        let mut intents = self.intents(hash)?;
        if let Some(at) = intents.iter().position(|(s, _)| *s == self.session) {
            intents[at].1 -= 1;
            if intents[at].1 == 0 {
                intents.swap_remove(at);
            }
        }
        self.put_intents(hash, &intents)
    }

    /// Whether GC may delete the chunk now (see [`Engine::condemn_chunks_in`]).
    fn condemn(&mut self, hash: &ChunkHash, unreferenced_before: Timestamp) -> TxResult<bool> {
        if self.has(keys::CONDEMNED, hash)? {
            return Ok(true);
        }
        if self.has(keys::CHUNK_REFS, hash)? || self.has(keys::INTENTS, hash)? {
            return Ok(false);
        }
        let unreferenced = keys::chunk(keys::UNREFERENCED, hash);
        if let Some(since) = self.get(&unreferenced)? {
            if keys::decode_time(&since)? > unreferenced_before {
                return Ok(false);
            }
            self.delete(&unreferenced);
        }
        self.put(&keys::chunk(keys::CONDEMNED, hash), &keys::encode_time(self.now));
        Ok(true)
    }
}

impl<K: Kv> Engine<K> {
    /// Chunks per transaction of the collection's bookkeeping (each reads four keys).
    fn chunk_page(&self) -> usize {
        (self.page() / 2).max(1)
    }

    pub(super) fn condemn_chunks_in(
        &self,
        hashes: &[ChunkHash],
        unreferenced_before: Timestamp,
    ) -> MetaResult<Vec<ChunkHash>> {
        let mut condemned = Vec::new();
        // Each chunk stands alone: a collection that stops between pages condemned some.
        for page in hashes.chunks(self.chunk_page()) {
            condemned.extend(self.mutate(|t| {
                let mut chosen = Vec::new();
                for hash in page {
                    if t.condemn(hash, unreferenced_before)? {
                        chosen.push(*hash);
                    }
                }
                Ok(chosen)
            })?);
        }
        Ok(condemned)
    }

    pub(super) fn condemned_chunks_in(&self) -> MetaResult<Vec<ChunkHash>> {
        let found = self.scan_all(&[keys::CONDEMNED])?;
        found.iter().map(|(k, _)| keys::chunk_hash(k)).collect()
    }

    pub(super) fn forget_condemned_in(&self, hashes: &[ChunkHash]) -> MetaResult<()> {
        for page in hashes.chunks(self.chunk_page()) {
            self.mutate(|t| {
                for hash in page {
                    t.delete(&keys::chunk(keys::CONDEMNED, hash));
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Drops every intent of `session` (it ended: its uploads will never be committed).
    pub(super) fn drop_intents_of(&self, session: SessionId) -> MetaResult<()> {
        let held: Vec<ChunkHash> = self
            .scan_all(&[keys::INTENTS])?
            .into_iter()
            .filter(|(_, v)| {
                decode_intents(Some(v.clone())).is_ok_and(|i| i.iter().any(|(s, _)| *s == session))
            })
            .map(|(k, _)| keys::chunk_hash(&k))
            .collect::<MetaResult<_>>()?;
        for page in held.chunks(self.chunk_page()) {
            self.run(|t| {
                for hash in page {
                    let mut intents = t.intents(hash)?;
                    intents.retain(|(s, _)| *s != session);
                    t.put_intents(hash, &intents)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
