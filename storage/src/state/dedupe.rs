//! The bounded table of recently applied dedupe keys (forwarded writes and `Idempotency-Key`s).
//!
//! A key maps to the response of its first application. The table keeps the most recent
//! [`CAPACITY`] keys, evicting the oldest first; eviction is part of `apply`, hence identical on
//! every node. A retry arriving after its key was evicted would apply again: the capacity is
//! sized so that this needs far more writes than can happen within a client's retry window.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Changes, decode};
use crate::codec::CodecError;
use crate::command::Response;

pub const PREFIX: &[u8] = b"d/";
pub const CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
pub struct DedupeTable {
    by_key: HashMap<String, Record>,
    by_seq: BTreeMap<u64, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    seq: u64,
    response: Response,
}

fn key_of(key: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

impl DedupeTable {
    pub fn get(&self, key: &str) -> Option<&Response> {
        self.by_key.get(key).map(|r| &r.response)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(crate) fn record(
        &mut self,
        key: String,
        response: Response,
        changes: &mut Changes,
    ) -> Result<(), CodecError> {
        let seq = self.by_seq.last_key_value().map_or(0, |(s, _)| s + 1);
        let record = Record { seq, response };
        changes.put(key_of(&key), &record)?;
        self.by_seq.insert(seq, key.clone());
        self.by_key.insert(key, record);
        while self.by_key.len() > CAPACITY {
            let Some((_, oldest)) = self.by_seq.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
            changes.delete(key_of(&oldest));
        }
        Ok(())
    }

    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        let name = String::from_utf8_lossy(&key[PREFIX.len()..]).into_owned();
        let record: Record = decode(value)?;
        self.by_seq.insert(record.seq, name.clone());
        self.by_key.insert(name, record);
        Ok(())
    }
}
