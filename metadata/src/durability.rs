//! Group commit: sled does not fsync a transaction by itself, so every mutation waits here
//! until a flush that started after its commit has finished. Whoever arrives while no flush is
//! running leads the next one; everyone who committed meanwhile rides on it, so N concurrent
//! mutations cost one fsync, not N.

use std::sync::{Condvar, Mutex};

use crate::error::{MetaError, MetaResult};

pub(crate) struct GroupCommit {
    db: sled::Db,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out: one per committed mutation.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    flushing: bool,
}

impl GroupCommit {
    pub(crate) fn new(db: sled::Db) -> Self {
        GroupCommit { db, state: Mutex::new(State::default()), flushed: Condvar::new() }
    }

    /// Call after a transaction has committed; returns once it is on stable storage.
    pub(crate) fn wait_durable(&self) -> MetaResult<()> {
        let mut state = self.state.lock().unwrap();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.flushing {
                state = self.flushed.wait(state).unwrap();
                continue;
            }
            state.flushing = true;
            let target = state.issued;
            drop(state);
            let result = self.db.flush();
            state = self.state.lock().unwrap();
            state.flushing = false;
            if result.is_ok() {
                state.durable = state.durable.max(target);
            }
            self.flushed.notify_all();
            if let Err(e) = result {
                return Err(MetaError::Store(format!("flushing the metadata log failed: {e}")));
            }
        }
    }
}
