//! Sending a snapshot to a follower: the leader's file in parts, several in flight.
//!
//! openraft 0.9's own transfer (`Chunked`) sends one chunk and waits for its answer before it
//! reads the next, with a 1 ms sleep in between; its request serialises the chunk's data a
//! byte at a time; and the follower writes each chunk through tokio's file (2 MiB at a time on
//! the blocking pool) and syncs all of it at the end. 500 MiB took ~3.4 s to send (1.4 s with
//! the data serialised as one byte string) and 0.6–0.8 s to sync
//! (`bench/experiments/catch_up.py --through-snapshot`; here 1.2–1.5 s and 0.04–0.22 s). Here the leader
//! keeps up to [`PARTS_IN_FLIGHT`] parts of [`PART_BYTES`] unanswered, as its AppendEntries
//! frames do (`crate::network`); the follower takes them in arrival order (`crate::transport`),
//! writes each at its offset and starts the disk write-back of it at once, so the sync before
//! the install has little left to do. When every part is acknowledged the leader sends
//! [`SnapshotDone`]; the follower checks it has every byte, and hands the file to openraft
//! (`Raft::install_full_snapshot`), which installs it in the state machine (which syncs it).
//!
//! A snapshot names audio chunks and never carries them: before it hands the file to openraft,
//! the follower fetches the chunks it lacks from its peers (`crate::chunk_fetch`), the leader
//! first, and refuses the snapshot if any cannot be had (openraft tries again later; what was
//! fetched stays). Meanwhile its own elections are off: it is behind the leader, so it could
//! not win one, and the term it would raise would only depose the leader. The leader waits up
//! to [`INSTALL_TIMEOUT`] for that answer.
//!
//! A part that does not continue what the follower has (a lost part, a new leader's stream) is
//! refused, and the leader gives up this attempt; openraft starts another one later. A part of
//! an older vote than the follower's is answered with the follower's vote, which makes the
//! leader step down, as openraft's own transfer does.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures_util::FutureExt;
use openraft::error::{Fatal, NetworkError, ReplicationClosed, StreamingError};
use openraft::network::RPCOption;
use openraft::raft::SnapshotResponse;
use openraft::{StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use storage::{ChorusNode, TypeConfig};

use crate::network::TransportFailure;
use crate::protocol::{PeerRequest, PeerResponse};
use crate::transport::{Transport, TransportError};
use crate::{Raft, Replica};

/// Bytes of the snapshot per part: the size of an AppendEntries frame (`crate::network`).
const PART_BYTES: u64 = 4 * 1024 * 1024;
/// Parts sent before the first of them must be answered: 24 MiB, as for AppendEntries.
const PARTS_IN_FLIGHT: usize = 6;
/// How long the leader waits for a follower to fetch the chunks it lacks and install (a large
/// library on a wiped node; a later attempt goes on from what was fetched).
const INSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Part of a snapshot file (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub vote: Vote<u64>,
    pub snapshot_id: String,
    pub offset: u64,
    #[serde(with = "storage::codec::bytes")]
    pub data: Vec<u8>,
}

/// Sent after every part was acknowledged: the follower installs the `len` bytes it received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta,
    pub len: u64,
}

/// Why a follower did not take a part or install the file.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum SnapshotRefused {
    /// The follower has seen a newer vote: the sender is no longer leader.
    #[error("the follower has a newer vote, {0}")]
    HigherVote(Vote<u64>),
    #[error("the follower expected snapshot {snapshot_id} from offset {expected}, got {got}")]
    OutOfOrder {
        snapshot_id: String,
        expected: u64,
        got: u64,
    },
    #[error("{0}")]
    Failed(String),
}

type Streaming<E = Fatal<u64>> = StreamingError<TypeConfig, E>;
type Snapshot = openraft::Snapshot<TypeConfig>;
type SnapshotMeta = openraft::SnapshotMeta<u64, ChorusNode>;

/// Sends `snapshot` to `target` and waits until it is installed there (openraft's
/// `RaftNetwork::full_snapshot`).
pub(crate) async fn send(
    transport: &Transport,
    target: u64,
    vote: Vote<u64>,
    snapshot: Snapshot,
    cancel: impl Future<Output = ReplicationClosed>,
    option: &RPCOption,
) -> Result<SnapshotResponse<u64>, Streaming> {
    let meta = snapshot.meta.clone();
    let storage_err = |e: io::Error| -> Streaming {
        StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)).into()
    };
    let file = Arc::new(snapshot.snapshot.into_std().await);
    let len = file.metadata().map_err(storage_err)?.len();
    let started = std::time::Instant::now();
    let mut cancel = std::pin::pin!(cancel);
    let mut in_flight = VecDeque::with_capacity(PARTS_IN_FLIGHT);
    let mut offset = 0;
    loop {
        if let Some(closed) = cancel.as_mut().now_or_never() {
            return Err(closed.into());
        }
        if offset < len && in_flight.len() < PARTS_IN_FLIGHT {
            let n = PART_BYTES.min(len - offset);
            let data = read_at(&file, offset, n).await.map_err(storage_err)?;
            let part = SnapshotPart {
                vote,
                snapshot_id: meta.snapshot_id.clone(),
                offset,
                data,
            };
            let call = transport
                .send(target, &PeerRequest::SnapshotPart(part), option.hard_ttl())
                .map_err(unreachable)?;
            in_flight.push_back(call);
            offset += n;
            continue;
        }
        let Some(call) = in_flight.pop_front() else {
            break;
        };
        match call.answer().await.map_err(unreachable)? {
            PeerResponse::SnapshotPart(Ok(())) => {}
            PeerResponse::SnapshotPart(Err(SnapshotRefused::HigherVote(theirs))) => {
                return Ok(SnapshotResponse::new(theirs));
            }
            other => return Err(refused(other)),
        }
    }
    let done = PeerRequest::SnapshotDone(SnapshotDone { vote, meta, len });
    let answer = tokio::select! {
        closed = cancel.as_mut() => return Err(closed.into()),
        answer = transport.call(target, &done, INSTALL_TIMEOUT) => {
            answer.map_err(unreachable)?
        }
    };
    let response = match answer {
        PeerResponse::SnapshotDone(Ok(response)) => response,
        PeerResponse::SnapshotDone(Err(SnapshotRefused::HigherVote(theirs))) => {
            SnapshotResponse::new(theirs)
        }
        other => return Err(refused(other)),
    };
    tracing::info!(target, bytes = len, took = ?started.elapsed(), "sent snapshot");
    Ok(response)
}

async fn read_at(file: &Arc<File>, offset: u64, n: u64) -> io::Result<Vec<u8>> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut data = vec![0; n as usize];
        file.read_exact_at(&mut data, offset)?;
        Ok(data)
    })
    .await
    .map_err(io::Error::other)?
}

fn unreachable(e: TransportError) -> Streaming {
    match TransportFailure::from(e) {
        TransportFailure::Network(e) => e.into(),
        TransportFailure::Unreachable(e) => e.into(),
    }
}

fn refused(answer: PeerResponse) -> Streaming {
    let e = match answer {
        PeerResponse::SnapshotPart(Err(e)) | PeerResponse::SnapshotDone(Err(e)) => e,
        other => SnapshotRefused::Failed(format!("answer of the wrong kind: {other:?}")),
    };
    NetworkError::new(&e).into()
}

/// The follower's side: the snapshot being received, if any.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    receiving: tokio::sync::Mutex<Option<Receiving>>,
}

#[derive(Debug)]
struct Receiving {
    vote: Vote<u64>,
    snapshot_id: String,
    /// From openraft's `begin_receiving_snapshot` (the state machine's incoming file).
    file: Arc<File>,
    /// Bytes written so far, all before this offset.
    written: u64,
}

impl Incoming {
    /// Writes `part` if it continues the snapshot being received, or starts a new one at offset
    /// 0. Parts must arrive in order (`crate::transport` keeps them so).
    pub(crate) async fn part(
        &self,
        raft: &Raft,
        part: SnapshotPart,
    ) -> Result<(), SnapshotRefused> {
        let mine = raft.metrics().borrow().vote;
        if part.vote < mine {
            return Err(SnapshotRefused::HigherVote(mine));
        }
        let mut receiving = self.receiving.lock().await;
        let continues = receiving
            .as_ref()
            .is_some_and(|r| r.vote == part.vote && r.snapshot_id == part.snapshot_id);
        if !continues || part.offset == 0 {
            if part.offset != 0 {
                return Err(SnapshotRefused::OutOfOrder {
                    snapshot_id: part.snapshot_id,
                    expected: 0,
                    got: part.offset,
                });
            }
            let file = raft
                .begin_receiving_snapshot()
                .await
                .map_err(|e| SnapshotRefused::Failed(e.to_string()))?;
            *receiving = Some(Receiving {
                vote: part.vote,
                snapshot_id: part.snapshot_id.clone(),
                file: Arc::new(file.into_std().await),
                written: 0,
            });
        }
        let Some(r) = receiving.as_mut() else {
            return Err(SnapshotRefused::Failed("no snapshot being received".into()));
        };
        if part.offset != r.written {
            return Err(SnapshotRefused::OutOfOrder {
                snapshot_id: part.snapshot_id,
                expected: r.written,
                got: part.offset,
            });
        }
        let file = r.file.clone();
        let n = part.data.len() as u64;
        tokio::task::spawn_blocking(move || write_part(&file, part.offset, &part.data))
            .await
            .map_err(|e| SnapshotRefused::Failed(e.to_string()))?
            .map_err(|e| SnapshotRefused::Failed(format!("write snapshot part: {e}")))?;
        r.written += n;
        Ok(())
    }

    /// Hands the received file to openraft to install, if it holds all `done.len` bytes and
    /// every chunk it names is here or could be fetched.
    pub(crate) async fn done(
        &self,
        replica: &Replica,
        done: SnapshotDone,
    ) -> Result<SnapshotResponse<u64>, SnapshotRefused> {
        let raft = replica.raft();
        let mut receiving = self.receiving.lock().await;
        let matches = receiving
            .as_ref()
            .is_some_and(|r| r.vote == done.vote && r.snapshot_id == done.meta.snapshot_id);
        let Some(r) = receiving.take().filter(|_| matches) else {
            return Err(SnapshotRefused::Failed(format!(
                "snapshot {} is not being received here",
                done.meta.snapshot_id
            )));
        };
        if r.written != done.len {
            return Err(SnapshotRefused::OutOfOrder {
                snapshot_id: r.snapshot_id,
                expected: done.len,
                got: r.written,
            });
        }
        let file = Arc::try_unwrap(r.file).map_err(|_| {
            SnapshotRefused::Failed("the snapshot file is still being written".into())
        })?;
        let file = fetch_lacking_chunks(replica, file).await?;
        let snapshot = Snapshot {
            meta: done.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        };
        raft.install_full_snapshot(done.vote, snapshot)
            .await
            .map_err(|e| SnapshotRefused::Failed(e.to_string()))
    }
}

/// Fetches the chunks the snapshot in `file` names that this node lacks, with this node's
/// elections off meanwhile (see the module docs); gives the file back, read from the start.
async fn fetch_lacking_chunks(replica: &Replica, file: File) -> Result<File, SnapshotRefused> {
    let store = replica.state().chunk_store().clone();
    let (file, lacking) = tokio::task::spawn_blocking(move || -> io::Result<_> {
        use std::io::{Seek, SeekFrom};
        let mut reader = &file;
        reader.seek(SeekFrom::Start(0))?;
        let named = storage::chunks_named_in(reader)?;
        reader.seek(SeekFrom::Start(0))?;
        let lacking = store.lacking(&named);
        Ok((file, lacking))
    })
    .await
    .map_err(|e| SnapshotRefused::Failed(e.to_string()))?
    .map_err(|e| SnapshotRefused::Failed(format!("read the received snapshot: {e}")))?;
    if lacking.is_empty() {
        return Ok(file);
    }
    tracing::info!(
        chunks = lacking.len(),
        "fetching the audio chunks the snapshot names"
    );
    let elections = replica.raft().runtime_config();
    elections.elect(false);
    let fetched = crate::chunk_fetch::fetch(
        replica.transport(),
        &replica.chunk_sources(),
        replica.state().chunk_store(),
        lacking,
    )
    .await;
    elections.elect(true);
    if !fetched.complete() {
        let first = fetched.failed.first().map(|(h, why)| format!("{h}: {why}"));
        return Err(SnapshotRefused::Failed(format!(
            "{} audio chunks the snapshot names could not be fetched ({})",
            fetched.failed.len(),
            first.or(fetched.sync_failed).unwrap_or_default()
        )));
    }
    Ok(file)
}

/// Writes `data` at `offset` and starts writing it to the disk (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE` waits for nothing): the install's sync then finds little left.
fn write_part(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    file.write_all_at(data, offset)?;
    // SAFETY: a plain syscall on a file descriptor this function borrows; it touches no memory.
    let started = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            data.len() as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if started != 0 {
        // Only a head start: the install syncs the whole file anyway.
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range on a snapshot part");
    }
    Ok(())
}
