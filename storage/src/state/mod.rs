//! The replicated domain state: kept in memory for reads, persisted in the `sm` sled tree.
//!
//! `apply` is the only writer. It mutates the in-memory state and records the same change as a
//! key/value write in [`Changes`]; the state machine commits those writes together with
//! `last_applied` in one atomic sled batch, so what is on disk always describes exactly one log
//! position. On start the in-memory state is rebuilt from the tree ([`State::load`]).
//!
//! Keys are `<domain prefix>/<key>`: each domain module owns its prefixes.

pub mod dedupe;
pub mod queue;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, CodecError};
use crate::command::{Command, Request, Response};
use dedupe::DedupeTable;
use queue::QueueState;

/// Key/value writes produced by applying entries, committed atomically by the state machine.
#[derive(Default)]
pub struct Changes {
    batch: sled::Batch,
}

impl Changes {
    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), CodecError> {
        self.batch.insert(key, codec::encode(value)?);
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.batch.remove(key);
    }

    pub fn into_batch(self) -> sled::Batch {
        self.batch
    }
}

/// `prefix` followed by a big-endian number, so keys sort numerically.
pub(crate) fn numbered_key(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn key_number(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Everything the cluster agrees on, as of one log position.
#[derive(Debug, Default)]
pub struct State {
    pub queue: QueueState,
    pub dedupe: DedupeTable,
}

impl State {
    /// Applies one request. Deterministic: the result depends only on the state and `req`.
    pub fn apply(&mut self, req: &Request, changes: &mut Changes) -> Result<Response, CodecError> {
        if let Some(key) = &req.dedupe_key
            && let Some(first) = self.dedupe.get(key)
        {
            return Ok(Response {
                result: first.result.clone(),
                deduplicated: true,
            });
        }
        let result = match &req.command {
            Command::Queue(cmd) => self.queue.apply(cmd, req.at_ms, changes)?,
        };
        let response = Response {
            result,
            deduplicated: false,
        };
        if let Some(key) = &req.dedupe_key {
            self.dedupe.record(key.clone(), response.clone(), changes)?;
        }
        Ok(response)
    }

    /// Rebuilds the state from the `sm` tree (ignores the state machine's own `m/` keys).
    pub fn load(tree: &sled::Tree) -> Result<Self, LoadError> {
        let mut state = State::default();
        for item in tree.iter() {
            let (key, value) = item?;
            let loaded = if key.starts_with(queue::PREFIX) {
                state.queue.load(&key, &value)
            } else if key.starts_with(dedupe::PREFIX) {
                state.dedupe.load(&key, &value)
            } else {
                Ok(())
            };
            loaded.map_err(|e| {
                LoadError::Decode(format!("key {:?}: {e}", String::from_utf8_lossy(&key)))
            })?;
        }
        Ok(state)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Decode(String),
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode(bytes)
}
