//! Chunk lifetimes against garbage collection (DESIGN §6, invariant I).
//!
//! A chunk's object may be deleted only when nothing references it and nobody is about to.
//! "About to" is an *intent*: a session protects a chunk before it uploads it or relies on
//! it being stored (dedup), and its commit releases the intent once the reference is in.
//! Collection *condemns* chunks in a transaction that sees every reference and intent; while
//! a chunk is condemned nobody may protect it (they wait, then upload it again), so an
//! object is never deleted under a reference or an upload that was promised it.

use sled::transaction::ConflictableTransactionError;

use super::txn::{fail, OrAbort, TxResult, Txn};
use super::SledStore;
use crate::error::{MetaError, MetaResult};
use crate::schema;
use crate::session::SessionId;
use crate::store::ChunkProtection;
use crate::types::{ChunkHash, Timestamp};

/// Each session's count of intents on one chunk.
type Intents = Vec<(SessionId, u64)>;

fn decode_intents(raw: Option<sled::IVec>) -> TxResult<Intents> {
    match raw {
        Some(v) => postcard::from_bytes(&v).map_err(MetaError::store).or_abort(),
        None => Ok(Vec::new()),
    }
}

fn encode_intents(intents: &Intents) -> TxResult<Vec<u8>> {
    postcard::to_allocvec(intents).map_err(MetaError::store).or_abort()
}

fn hash_key(key: &[u8]) -> MetaResult<ChunkHash> {
    key.try_into().map_err(|_| MetaError::Store("malformed chunk key".into()))
}

impl Txn<'_> {
    /// Whether the metadata knows the chunk's object to be stored.
    fn is_stored(&self, hash: &ChunkHash) -> TxResult<bool> {
        Ok(self.chunk_refs.get(hash)?.is_some() || self.unreferenced.get(hash)?.is_some())
    }

    pub(super) fn protect_chunk(&self, hash: &ChunkHash) -> TxResult<ChunkProtection> {
        if self.condemned.get(hash)?.is_some() {
            return Ok(ChunkProtection::Condemned);
        }
        let mut intents = decode_intents(self.intents.get(hash)?)?;
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
        self.intents.insert(hash, encode_intents(&intents)?)?;
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
    pub(super) fn check_protected(&self, hash: &ChunkHash) -> TxResult<()> {
        if self.condemned.get(hash)?.is_some() {
            return fail(MetaError::ChunkUnprotected(*hash));
        }
        if self.unreferenced.get(hash)?.is_some() {
            return Ok(());
        }
        let intents = decode_intents(self.intents.get(hash)?)?;
        if intents.iter().any(|(s, _)| *s == self.session) {
            return Ok(());
        }
        fail(MetaError::ChunkUnprotected(*hash))
    }

    pub(super) fn release_intent(&self, hash: &ChunkHash) -> TxResult<()> {
        let mut intents = decode_intents(self.intents.get(hash)?)?;
        if let Some(at) = intents.iter().position(|(s, _)| *s == self.session) {
            intents[at].1 -= 1;
            if intents[at].1 == 0 {
                intents.swap_remove(at);
            }
        }
        if intents.is_empty() {
            self.intents.remove(hash)?;
        } else {
            self.intents.insert(hash, encode_intents(&intents)?)?;
        }
        Ok(())
    }

    /// Whether GC may delete the chunk now (see [`SledStore::condemn_chunks_in`]).
    fn condemn(&self, hash: &ChunkHash, unreferenced_before: Timestamp) -> TxResult<bool> {
        if self.condemned.get(hash)?.is_some() {
            return Ok(true);
        }
        if self.chunk_refs.get(hash)?.is_some() || self.intents.get(hash)?.is_some() {
            return Ok(false);
        }
        if let Some(since) = self.unreferenced.get(hash)? {
            if schema::decode_time(&since).or_abort()? > unreferenced_before {
                return Ok(false);
            }
            self.unreferenced.remove(hash)?;
        }
        self.condemned.insert(hash, schema::encode_time(self.now))?;
        Ok(true)
    }
}

impl SledStore {
    pub(super) fn condemn_chunks_in(
        &self,
        hashes: &[ChunkHash],
        unreferenced_before: Timestamp,
    ) -> MetaResult<Vec<ChunkHash>> {
        self.mutate(|t| {
            let mut condemned = Vec::new();
            for hash in hashes {
                if t.condemn(hash, unreferenced_before)? {
                    condemned.push(*hash);
                }
            }
            Ok(condemned)
        })
    }

    pub(super) fn condemned_chunks_in(&self) -> MetaResult<Vec<ChunkHash>> {
        self.shared.trees.condemned.iter().keys().map(|k| hash_key(&k?)).collect()
    }

    pub(super) fn forget_condemned_in(&self, hashes: &[ChunkHash]) -> MetaResult<()> {
        for hash in hashes {
            self.shared.trees.condemned.remove(hash)?;
        }
        self.shared.durable.wait_durable()
    }

    /// Drops every intent of `session` (it ended: its uploads will never be committed).
    pub(super) fn drop_intents_of(&self, session: SessionId) -> MetaResult<()> {
        let tree = &self.shared.trees.intents;
        for item in tree.iter() {
            let (key, _) = item?;
            tree.transaction(|t| {
                let mut intents = decode_intents(t.get(&key)?)?;
                intents.retain(|(s, _)| *s != session);
                if intents.is_empty() {
                    t.remove(&key)?;
                } else {
                    t.insert(&key, encode_intents(&intents)?)?;
                }
                Ok::<_, ConflictableTransactionError<MetaError>>(())
            })?;
        }
        Ok(())
    }
}
