//! Audio sent by hash. A `PutChunk` write carries up to 1 MiB of audio. The node that receives
//! an upload first pushes each chunk to its peers over a connection of its own (the HTTP port:
//! `api::tracks::push`, [`Replica::accept_pushed_chunk`]), then the Raft messages that carry the
//! write — a follower's forward to the leader, the leader's AppendEntries — leave the bytes out
//! (`Request::without_audio`). Without that, a megabyte crawling over a slow link (a cold TCP
//! window at 200 ms round trips takes ~1.4 s for it) sat in front of every heartbeat and vote
//! on the one Raft connection, and the cluster stopped serving.
//!
//! The peer puts the bytes back from its chunk store ([`fill_entries`], [`fill_writes`]) before
//! the write goes any further, so its log holds them exactly as if they had come along:
//! durability does not depend on the push. A peer without the chunk answers
//! `PeerResponse::LacksAudio` and is sent the write again with its bytes.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use storage::state::tracks::CHUNK_SIZE;
use storage::{ChunkHash, ChunkStore, Entry, ReadBack, Request};

use crate::chunk_fetch::on_blocking_pool;
use crate::replica::Replica;

/// Why a pushed chunk was not kept.
#[derive(Debug, thiserror::Error)]
pub enum PushRefused {
    #[error("the proof does not match: the pushing node does not know the cluster's secret")]
    Forbidden,
    #[error("a chunk holds 1 to {CHUNK_SIZE} bytes, not {0}")]
    Size(usize),
    #[error("the bytes do not hash to {0}")]
    Mismatch(ChunkHash),
    #[error("the chunk could not be stored: {0}")]
    Store(String),
}

/// The proof that a push of `hash` comes from a node that knows the cluster's secret: HMAC-SHA256
/// of the hash under the secret. Bound to the chunk, so one seen on the wire only lets someone
/// push that same chunk again.
fn proof(secret: &[u8], hash: &ChunkHash) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(b"chorus chunk push\0");
    mac.update(&hash.0);
    mac
}

impl Replica {
    /// The proof to send with a push of `hash` (hex).
    pub fn chunk_push_proof(&self, hash: &ChunkHash) -> String {
        let tag = proof(self.secret(), hash).finalize().into_bytes();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Where to push a chunk: the HTTP address of every other member this node has a live
    /// session with (a push to one it cannot reach would only wait for its timeout).
    pub fn push_targets(&self) -> Vec<(u64, String)> {
        let metrics = self.raft().metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id() && self.transport().reachable(**id))
            .map(|(id, node)| (*id, node.http_addr.clone()))
            .collect()
    }

    /// Keeps a chunk a peer pushed ahead of the write that names it, if the proof is right and
    /// the bytes are the chunk ([`Self::keep_chunk_copy`]).
    pub async fn accept_pushed_chunk(
        &self,
        hash: ChunkHash,
        proof_hex: &str,
        bytes: Vec<u8>,
    ) -> Result<(), PushRefused> {
        let claimed = decode_hex(proof_hex).ok_or(PushRefused::Forbidden)?;
        proof(self.secret(), &hash)
            .verify_slice(&claimed)
            .map_err(|_| PushRefused::Forbidden)?;
        self.keep_chunk_copy(hash, bytes).await
    }

    /// Stores a chunk a write will name, so that the write's Raft messages can leave its bytes
    /// out. Not synced: the write's log entry, which holds the bytes once they are put back, is
    /// what makes them durable; until then the file only saves sending them, and is swept at
    /// the next start if nothing names it.
    pub async fn keep_chunk_copy(
        &self,
        hash: ChunkHash,
        bytes: Vec<u8>,
    ) -> Result<(), PushRefused> {
        if bytes.is_empty() || bytes.len() > CHUNK_SIZE {
            return Err(PushRefused::Size(bytes.len()));
        }
        if ChunkHash::of(&bytes) != hash {
            return Err(PushRefused::Mismatch(hash));
        }
        let store = self.chunk_store();
        on_blocking_pool(move || store.put(&hash, &bytes))
            .await
            .map_err(PushRefused::Store)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The request an entry carries, if any.
fn request_mut(entry: &mut Entry) -> Option<&mut Request> {
    match &mut entry.payload {
        openraft::EntryPayload::Normal(req) => Some(req),
        _ => None,
    }
}

/// Leaves the audio out of every `PutChunk` in `entries`; returns how many were.
pub(crate) fn strip_entries(entries: &mut [Entry]) -> usize {
    let mut stripped = 0;
    for entry in entries {
        if let Some(req) = request_mut(entry)
            && let Some((_, bytes)) = req.audio_mut()
        {
            *bytes = Vec::new();
            stripped += 1;
        }
    }
    stripped
}

/// Puts the audio left out of `requests` back from `store`; the chunks it lacks otherwise
/// (none filled then).
async fn fill<'a>(
    store: &Arc<ChunkStore>,
    requests: impl Iterator<Item = &'a mut Request>,
) -> Result<(), Vec<ChunkHash>> {
    let wanted: Vec<&'a mut Request> = requests.filter(|r| r.audio_left_out()).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let names: Vec<ChunkHash> = wanted
        .iter()
        .filter_map(|r| r.audio().map(|(hash, _)| hash))
        .collect();
    let reading = store.clone();
    let names_if_lost = names.clone();
    // A file that is missing or damaged (`read` checks it) counts as lacking.
    let read = tokio::task::spawn_blocking(move || {
        let mut found = Vec::with_capacity(names.len());
        let mut lacking = Vec::new();
        for hash in &names {
            match reading.read(hash) {
                Ok(bytes) => found.push(bytes.to_vec()),
                Err(_) => lacking.push(*hash),
            }
        }
        if lacking.is_empty() {
            Ok(found)
        } else {
            Err(lacking)
        }
    });
    // A read that could not run (the runtime stopping) lacks everything.
    let read = read.await.unwrap_or(Err(names_if_lost))?;
    for (req, bytes) in wanted.into_iter().zip(read) {
        if let Some((_, slot)) = req.audio_mut() {
            *slot = bytes;
        }
    }
    Ok(())
}

/// [`fill`] for AppendEntries.
pub(crate) async fn fill_entries(
    store: &Arc<ChunkStore>,
    entries: &mut [Entry],
) -> Result<(), Vec<ChunkHash>> {
    fill(store, entries.iter_mut().filter_map(request_mut)).await
}

/// [`fill`] for forwarded writes.
pub(crate) async fn fill_writes(
    store: &Arc<ChunkStore>,
    writes: &mut [(Request, Option<ReadBack>)],
) -> Result<(), Vec<ChunkHash>> {
    fill(store, writes.iter_mut().map(|(r, _)| r)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use storage::{Command, QueueCommand, TrackCommand};

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                dedupe_key: Some(format!("k{index}")),
                at_ms: 7,
                command,
            }),
        }
    }

    fn chunk(index: u32, fill: u8) -> Command {
        Command::Tracks(TrackCommand::put_chunk(
            1,
            index,
            vec![fill; 1000 + index as usize],
        ))
    }

    #[tokio::test]
    async fn stripped_audio_is_put_back_from_the_store_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ChunkStore::open(dir.path()).expect("open"));
        let original = vec![
            entry(1, chunk(0, 1)),
            entry(2, Command::Queue(QueueCommand::Clear)),
            entry(3, chunk(1, 2)),
        ];
        for e in &original {
            if let EntryPayload::Normal(req) = &e.payload
                && let Command::Tracks(TrackCommand::PutChunk { hash, bytes, .. }) = &req.command
            {
                store.put(hash, bytes).expect("put");
            }
        }
        let mut sent = original.clone();
        assert_eq!(strip_entries(&mut sent), 2);
        let wire: usize = sent
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(r) => Some(r.approx_size()),
                _ => None,
            })
            .sum();
        assert!(wire < 1000, "{wire} bytes left after stripping");
        fill_entries(&store, &mut sent).await.expect("filled");
        assert_eq!(sent, original);
        // Nothing left out: nothing to do.
        fill_entries(&store, &mut sent).await.expect("whole");
        assert_eq!(sent, original);
    }

    #[tokio::test]
    async fn a_chunk_missing_or_damaged_here_is_named_and_nothing_is_filled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ChunkStore::open(dir.path()).expect("open"));
        let with_audio = Request {
            dedupe_key: None,
            at_ms: 0,
            command: chunk(0, 9),
        };
        let present = Request {
            dedupe_key: None,
            at_ms: 0,
            command: chunk(1, 8),
        };
        let (Some((missing, _)), Some((here, bytes))) = (with_audio.audio(), present.audio())
        else {
            panic!("chunks carry audio");
        };
        store.put(&here, bytes).expect("put");
        let mut writes = vec![
            (present.without_audio(), None),
            (with_audio.without_audio(), None),
        ];
        assert_eq!(fill_writes(&store, &mut writes).await, Err(vec![missing]));
        assert!(writes.iter().all(|(r, _)| r.audio_left_out()));

        // A file whose bytes are not the chunk's is as good as missing.
        std::fs::write(store.path(&here), b"not the chunk").expect("damage");
        let mut one = vec![(present.without_audio(), None)];
        assert_eq!(fill_writes(&store, &mut one).await, Err(vec![here]));
    }

    #[test]
    fn a_push_proof_is_bound_to_the_secret_and_the_chunk() {
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        let tag = |secret: &[u8], h: &ChunkHash| proof(secret, h).finalize().into_bytes().to_vec();
        assert_eq!(tag(b"s", &a), tag(b"s", &a));
        assert_ne!(tag(b"s", &a), tag(b"t", &a));
        assert_ne!(tag(b"s", &a), tag(b"s", &b));
        let hex: String = tag(b"s", &a).iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(decode_hex(&hex), Some(tag(b"s", &a)));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é0"), None);
    }
}
