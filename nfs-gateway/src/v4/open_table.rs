//! The gateway's NFSv4 opens, by stateid, with the indexes the hot paths need: the opens of
//! one file (OPEN's share checks and its search for the owner's open, I/O outside any open)
//! and of one client (its cap, whether it holds state, its expiry). Without them each OPEN
//! walked every open of every client.

use std::collections::{HashMap, HashSet};

use elasticfs_core::metadata::Ino;

use super::state::Open;

/// An open's name: the `other` part of its stateid.
pub type OpenId = [u8; 12];

#[derive(Default)]
pub struct OpenTable {
    by_id: HashMap<OpenId, Open>,
    by_file: HashMap<Ino, HashSet<OpenId>>,
    by_client: HashMap<u64, HashSet<OpenId>>,
}

impl OpenTable {
    pub fn get(&self, id: &OpenId) -> Option<&Open> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &OpenId) -> Option<&mut Open> {
        self.by_id.get_mut(id)
    }

    pub fn insert(&mut self, id: OpenId, open: Open) {
        self.by_file.entry(open.ino).or_default().insert(id);
        self.by_client.entry(open.client).or_default().insert(id);
        self.by_id.insert(id, open);
    }

    pub fn remove(&mut self, id: &OpenId) -> Option<Open> {
        let open = self.by_id.remove(id)?;
        unindex(&mut self.by_file, open.ino, id);
        unindex(&mut self.by_client, open.client, id);
        Some(open)
    }

    /// The opens of file `ino`.
    pub fn of_file(&self, ino: Ino) -> impl Iterator<Item = (&OpenId, &Open)> {
        self.by_file.get(&ino).into_iter().flatten().map(|id| (id, &self.by_id[id]))
    }

    pub fn file_is_open(&self, ino: Ino) -> bool {
        self.by_file.contains_key(&ino)
    }

    /// How many opens client `client` holds.
    pub fn count_of(&self, client: u64) -> usize {
        self.by_client.get(&client).map_or(0, HashSet::len)
    }

    /// Removes client `client`'s opens and returns them.
    pub fn remove_client(&mut self, client: u64) -> Vec<Open> {
        let ids = self.by_client.get(&client).cloned().unwrap_or_default();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }
}

/// Takes `id` out of `key`'s set, and the set out of the index once it is empty.
fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, HashSet<OpenId>>, key: K, id: &OpenId) {
    if let Some(ids) = index.get_mut(&key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::open_files::OpenHandle;

    fn open(client: u64, ino: Ino) -> Open {
        let handle = Arc::new(OpenHandle::for_tests(ino));
        Open { client, owner: b"o".to_vec(), ino, seqid: 1, access: 3, deny: 0, handle }
    }

    #[test]
    fn the_indexes_follow_inserts_and_removals() {
        let mut t = OpenTable::default();
        t.insert([1; 12], open(7, 100));
        t.insert([2; 12], open(7, 200));
        t.insert([3; 12], open(8, 100));
        assert_eq!(t.of_file(100).count(), 2);
        assert_eq!((t.count_of(7), t.count_of(8), t.count_of(9)), (2, 1, 0));
        assert!(t.remove(&[3; 12]).is_some());
        assert_eq!(t.of_file(100).map(|(id, _)| *id).collect::<Vec<_>>(), vec![[1; 12]]);
        assert_eq!(t.remove_client(7).len(), 2);
        assert!(!t.file_is_open(100) && !t.file_is_open(200) && t.count_of(7) == 0);
        assert!(t.get(&[1; 12]).is_none());
    }
}
