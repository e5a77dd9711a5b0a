//! openraft's network, carried by [`Transport`]. What openraft hands to one AppendEntries is sent
//! as frames of at most [`MAX_APPEND_BYTES`], several in flight at once, and reported back as
//! far as the follower took them in order (openraft's `PartialSuccess`). A transport
//! failure (no session, lost session) is reported as `Unreachable`, so openraft backs off
//! instead of hammering the peer; an AppendEntries answered late is a `Timeout` (`append_error`).

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::RPCTypes;
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::SnapshotResponse;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, LogId, OptionalSend, Snapshot, Vote};
use std::future::Future;
use std::time::Duration;
use storage::{ChorusNode, Entry, TypeConfig};

use crate::by_hash;
use crate::metrics::{self, AudioSent};
use crate::protocol::{PeerRequest, PeerResponse};
use crate::transport::{PendingCall, Transport, TransportError};

/// Bytes of entries per AppendEntries frame. openraft bounds a request by entry count only
/// (`max_payload_entries`, high so that small writes replicate in large batches); audio chunk
/// entries are 1 MiB each, so what it reads (`storage::log_store::REPLICATION_READ_BYTES`) is cut into
/// frames by size here. openraft 0.9 gives the whole AppendEntries only `heartbeat_interval` to
/// complete (encode, send, the follower's write and fsync, answer; seen when frames were larger:
/// a catch-up taking 42 s instead of 5 on repeated timeouts). Small frames let the follower start
/// writing the first while the next are on the way: 4 MiB (three chunks) against 8 MiB, catch-up
/// of 500 MiB 3.16–3.26 s against 3.25–3.50 s; 2 MiB (one chunk and an fsync per frame) was slower.
const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// Most bytes of entries in flight to one follower: all that openraft reads for one
/// AppendEntries.
const MAX_IN_FLIGHT: usize = storage::log_store::REPLICATION_READ_BYTES as usize;

/// How often replication to an unreachable follower is tried again: at first, and after
/// [`UNREACHABLE_RETRIES_SOON`] tries (see `PeerLink::backoff`).
const UNREACHABLE_RETRY: Duration = Duration::from_millis(200);
const UNREACHABLE_RETRIES_SOON: usize = 50;
const UNREACHABLE_RETRY_LATER: Duration = Duration::from_secs(1);

/// AppendEntries carrying more than this, to a follower not known to have their `prev_log_id`,
/// are preceded by an empty one that asks (see `PeerLink::append_entries`). Batches of small
/// writes stay under it and never wait for a probe.
const PROBE_ABOVE_BYTES: usize = 1024 * 1024;

/// How long a link sends audio with its bytes after the follower lacked a chunk sent by hash
/// (`crate::by_hash`): a follower catching up lacks every chunk pushed while it was away, and
/// each try by hash would cost a round trip.
const AUDIO_INLINE_AFTER_LACK: Duration = Duration::from_secs(5);

/// Roughly how many bytes `entry` takes in a frame (blank and membership entries are small).
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(req) => req.approx_size(),
        _ => 256,
    }
}

fn carries_audio(entry: &Entry) -> bool {
    matches!(&entry.payload, EntryPayload::Normal(req) if req.carries_audio())
}

/// How many of `entries` (at least one, if any) fit in `budget` bytes.
fn entries_within(entries: &[Entry], budget: usize) -> usize {
    let mut used = 0;
    for (k, entry) in entries.iter().enumerate() {
        used += entry_size(entry);
        if used > budget {
            return k.max(1);
        }
    }
    entries.len()
}

pub struct Network {
    transport: Transport,
}

impl Network {
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, _node: &ChorusNode) -> PeerLink {
        PeerLink {
            target,
            transport: self.transport.clone(),
            matched: None,
            in_flight_budget: MAX_IN_FLIGHT,
            audio_inline_until: None,
        }
    }
}

pub struct PeerLink {
    target: u64,
    transport: Transport,
    /// The last log id the follower acknowledged through this link: AppendEntries that continue
    /// from it need no probe (see `append_entries`).
    matched: Option<LogId<u64>>,
    /// Bytes of entries sent in one AppendEntries before the first answer: halved when frames
    /// are not answered in time, grown again by a frame after each AppendEntries answered whole.
    in_flight_budget: usize,
    /// Until then audio goes with its bytes (see [`AUDIO_INLINE_AFTER_LACK`]).
    audio_inline_until: Option<tokio::time::Instant>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, ChorusNode, RaftError<u64, E>>>;

impl PeerLink {
    async fn send<T, E: std::error::Error>(
        &self,
        req: PeerRequest,
        option: &RPCOption,
        extract: impl FnOnce(PeerResponse) -> Option<Result<T, RaftError<u64, E>>>,
    ) -> RpcResult<T, E> {
        let resp = self
            .transport
            .call(self.target, &req, option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        self.extract(resp, extract)
    }

    // The error is openraft's own RPCError, which the RaftNetwork methods return as it is.
    #[allow(clippy::result_large_err)]
    fn extract<T, E: std::error::Error>(
        &self,
        resp: PeerResponse,
        extract: impl FnOnce(PeerResponse) -> Option<Result<T, RaftError<u64, E>>>,
    ) -> RpcResult<T, E> {
        match extract(resp) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => {
                let e = TransportError::Malformed(self.target, "answer of the wrong kind".into());
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    /// Sends `rpc` as frames of at most [`MAX_APPEND_BYTES`], all before awaiting the first
    /// answer (see `append_entries`). Frames after the first that are not answered by
    /// `later_deadline` are left out of what is reported.
    async fn send_frames(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
        later_deadline: tokio::time::Instant,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let AppendEntriesRequest {
            vote,
            prev_log_id,
            leader_commit,
            entries,
        } = rpc;
        let count = entries.len();
        let mut calls = Vec::new();
        let mut cut_short = false;
        let mut prev_log_id = prev_log_id;
        let mut in_flight = 0;
        for entries in into_frames(entries, MAX_APPEND_BYTES) {
            let bytes: usize = entries.iter().map(entry_size).sum();
            if !calls.is_empty() && in_flight + bytes > self.in_flight_budget {
                cut_short = true;
                break;
            }
            in_flight += bytes;
            let last = entries.last().map(|e| e.log_id).or(prev_log_id);
            let mut entries = entries;
            if self.audio_by_hash() {
                metrics::audio_sent_n(AudioSent::ByHash, by_hash::strip_entries(&mut entries));
            } else {
                let inline = entries.iter().filter(|e| carries_audio(e)).count();
                metrics::audio_sent_n(AudioSent::Inline, inline);
            }
            let frame = AppendEntriesRequest {
                vote,
                prev_log_id,
                leader_commit,
                entries,
            };
            match self.send_frame(frame, option) {
                Ok(call) => calls.push((call, last)),
                Err(e) if calls.is_empty() => return Err(e),
                Err(_) => {
                    cut_short = true;
                    break;
                }
            }
            prev_log_id = last;
        }
        let frames = calls.len();
        let mut progress = FrameProgress::default();
        for (k, (call, last)) in calls.into_iter().enumerate() {
            let answer = if k == 0 {
                Some(self.frame_answer(call, count).await)
            } else {
                let answer =
                    tokio::time::timeout_at(later_deadline, self.frame_answer(call, count)).await;
                if answer.is_err() {
                    // More was in flight than the link carries in time (a slower network than
                    // loopback): send less at once from now on.
                    self.in_flight_budget = (in_flight / 2).max(MAX_APPEND_BYTES);
                }
                answer.ok()
            };
            match progress.take(k, last, answer) {
                FrameOutcome::Next => {
                    tracing::trace!(target: "chorus::stages", stage = "replicate.acked");
                }
                FrameOutcome::Stop => break,
                FrameOutcome::Return(result) => return *result,
            }
        }
        if progress.succeeded == frames {
            self.in_flight_budget = (self.in_flight_budget + MAX_APPEND_BYTES).min(MAX_IN_FLIGHT);
        }
        Ok(progress.report(frames, cut_short))
    }

    /// Sends one AppendEntries frame; the answer is awaited separately.
    #[allow(clippy::result_large_err)] // openraft's RPCError, as in `extract`
    fn send_frame(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<PendingCall, RPCError<u64, ChorusNode, RaftError<u64>>> {
        // Heartbeats (no entries) are left out of the stage trace (bench/experiments/write_stages.py).
        if !rpc.entries.is_empty() {
            tracing::trace!(target: "chorus::stages", stage = "replicate.send");
        }
        self.transport
            .send(
                self.target,
                &PeerRequest::AppendEntries(rpc),
                option.hard_ttl(),
            )
            .map_err(rpc_error)
    }

    /// Audio goes by hash unless the follower lacked a chunk lately.
    fn audio_by_hash(&mut self) -> bool {
        match self.audio_inline_until {
            Some(until) if tokio::time::Instant::now() < until => false,
            _ => {
                self.audio_inline_until = None;
                true
            }
        }
    }

    /// The answer to a frame of an AppendEntries carrying `entries`. A follower that lacked
    /// audio sent by hash took none of the frame; from now on audio goes with its bytes for a
    /// while, and openraft is told to send the same again at once: `PayloadTooLarge` is the
    /// error it retries without a pause (a success reporting no progress would do for a
    /// follower with entries, but a brand-new one has none to report).
    async fn frame_answer(
        &mut self,
        call: PendingCall,
        entries: usize,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let resp = call
            .answer()
            .await
            .map_err(|e| append_error(self.transport.node_id(), e))?;
        if let PeerResponse::LacksAudio(lacking) = &resp {
            tracing::debug!(
                target: "chorus::replication",
                to = self.target,
                chunks = lacking.len(),
                "the follower lacks audio sent by hash; sending it with its bytes"
            );
            self.audio_inline_until = Some(tokio::time::Instant::now() + AUDIO_INLINE_AFTER_LACK);
            let again = PayloadTooLarge::new_entries_hint(entries.max(1) as u64);
            return Err(RPCError::PayloadTooLarge(again));
        }
        self.extract(resp, |r| match r {
            PeerResponse::AppendEntries(r) => Some(r),
            _ => None,
        })
    }
}

/// What a transport failure is to openraft: an unreadable answer is a network error, anything
/// else (no session, a timeout, a lost session) means the peer is unreachable, and openraft
/// backs off. For RPCs ([`rpc_error`]) and snapshot transfers (`crate::snapshot_transfer`); an
/// AppendEntries answered late is a timeout instead ([`append_error`]).
pub(crate) enum TransportFailure {
    Network(NetworkError),
    Unreachable(Unreachable),
}

impl From<TransportError> for TransportFailure {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Malformed(..) => Self::Network(NetworkError::new(&e)),
            _ => Self::Unreachable(Unreachable::new(&e)),
        }
    }
}

fn rpc_error<E: std::error::Error>(
    e: TransportError,
) -> RPCError<u64, ChorusNode, RaftError<u64, E>> {
    match TransportFailure::from(e) {
        TransportFailure::Network(e) => RPCError::Network(e),
        TransportFailure::Unreachable(e) => RPCError::Unreachable(e),
    }
}

/// A follower that does not answer an AppendEntries in time is slow, not gone: a stalled
/// fdatasync (three nodes share one disk here) held both followers' answers for ~160 ms, and
/// as `Unreachable` that put openraft's streams in their 200 ms back-off on top — writes
/// stopped for ~355 ms (a one-client p99 of 250 ms). As openraft's `Timeout` the next
/// AppendEntries goes as soon as there is something to send. A peer that is really gone
/// still backs off: its session is dropped after failed pings, and then every call fails
/// at once with `NotConnected`.
fn append_error(own_id: u64, e: TransportError) -> RPCError<u64, ChorusNode, RaftError<u64>> {
    match e {
        TransportError::Timeout(target, timeout) => RPCError::Timeout(Timeout {
            action: RPCTypes::AppendEntries,
            id: own_id,
            target,
            timeout,
        }),
        e => rpc_error(e),
    }
}

/// What openraft is told of the frames of one AppendEntries, answered in order (see
/// `PeerLink::append_entries`): only the unbroken run of successes from the first frame counts.
#[derive(Debug, Default)]
struct FrameProgress {
    /// The last log id of the last frame in that run.
    acked: Option<LogId<u64>>,
    succeeded: usize,
}

#[derive(Debug)]
enum FrameOutcome {
    /// The frame succeeded; await the next.
    Next,
    /// Report what succeeded so far.
    Stop,
    /// The first frame's own answer is the answer (boxed: openraft's error is large).
    Return(Box<RpcResult<AppendEntriesResponse<u64>>>),
}

impl FrameProgress {
    /// Takes frame `k`'s answer (`None`: not answered in time); `last` is its last log id.
    fn take(
        &mut self,
        k: usize,
        last: Option<LogId<u64>>,
        answer: Option<RpcResult<AppendEntriesResponse<u64>>>,
    ) -> FrameOutcome {
        match answer {
            Some(Ok(AppendEntriesResponse::Success)) => {
                self.acked = last;
                self.succeeded += 1;
                FrameOutcome::Next
            }
            Some(other) if k == 0 => FrameOutcome::Return(Box::new(other)),
            // What a later frame met (a conflict, a higher vote, a lost session, the deadline)
            // is met again by the next AppendEntries, which starts after the frames acked here.
            _ => FrameOutcome::Stop,
        }
    }

    /// The answer once every frame that will be considered was taken: `frames` were sent, and
    /// `cut_short` when some entries were not sent at all.
    fn report(self, frames: usize, cut_short: bool) -> AppendEntriesResponse<u64> {
        if self.succeeded == frames && !cut_short {
            AppendEntriesResponse::Success
        } else {
            AppendEntriesResponse::PartialSuccess(self.acked)
        }
    }
}

/// Cuts `entries` into frames of at most `budget` bytes each (at least one entry per frame, and
/// one empty frame for a heartbeat).
fn into_frames(mut entries: Vec<Entry>, budget: usize) -> Vec<Vec<Entry>> {
    let mut frames = Vec::new();
    loop {
        let fits = entries_within(&entries, budget);
        let rest = entries.split_off(fits);
        frames.push(entries);
        if rest.is_empty() {
            return frames;
        }
        entries = rest;
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    /// The entries openraft hands over (up to `storage::log_store::REPLICATION_READ_BYTES`) go as several
    /// frames, all sent before the first answer arrives: openraft 0.9 keeps one AppendEntries in
    /// flight per follower, and sending, decoding and the follower's fsync one frame at a time
    /// left each side idle half of a catch-up. The follower hands frames to openraft in the order
    /// they arrived (`crate::transport`), so each frame's `prev_log_id` is the last entry of the
    /// one before. openraft learns how far the follower got: all of it, or the frames answered
    /// in order with success before the first that was not (`PartialSuccess`); a later frame
    /// that the follower took anyway is sent again and matches.
    ///
    /// When this link has not seen the follower take `prev_log_id` (a new leader, a follower
    /// that restarted or was wiped, a conflict), megabytes of entries are not sent on a guess:
    /// an empty AppendEntries asks first whether the follower has `prev_log_id`. openraft looks
    /// for the point where the follower's log matches by trying log ids one after the other;
    /// without the probe each try would carry a full batch of audio for the follower to refuse.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        // The first frame has the whole budget, as a lone AppendEntries had; later ones must be
        // answered within openraft's soft limit, or the frames before them are reported alone.
        let later_deadline = tokio::time::Instant::now() + option.soft_ttl();
        let unsure = rpc.prev_log_id.is_some() && rpc.prev_log_id != self.matched;
        let bytes: usize = rpc.entries.iter().map(entry_size).sum();
        if unsure && bytes > PROBE_ABOVE_BYTES {
            let probe = AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                entries: Vec::new(),
            };
            let call = self.send_frame(probe, &option);
            let answer = match call {
                Ok(call) => self.frame_answer(call, rpc.entries.len()).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(AppendEntriesResponse::Success) => {}
                other => {
                    self.matched = None;
                    return other;
                }
            }
        }
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let (count, started) = (rpc.entries.len(), std::time::Instant::now());
        let result = self.send_frames(rpc, &option, later_deadline).await;
        if count > 0 {
            tracing::debug!(
                target: "chorus::replication",
                to = self.target,
                entries = count,
                mib = bytes as f64 / 1048576.0,
                ms = started.elapsed().as_secs_f64() * 1e3,
                budget_mib = self.in_flight_budget / 1048576,
                answer = ?result.as_ref().map_err(|e| e.to_string()),
                "append_entries round"
            );
        }
        self.matched = match &result {
            Ok(AppendEntriesResponse::Success) => last,
            Ok(AppendEntriesResponse::PartialSuccess(m)) => *m,
            _ => None,
        };
        result
    }

    /// The whole snapshot, in parts several in flight (`crate::snapshot_transfer`), instead of
    /// openraft's one chunk at a time through `install_snapshot`.
    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        crate::snapshot_transfer::send(
            &self.transport,
            self.target,
            vote,
            snapshot,
            cancel,
            &option,
        )
        .await
    }

    /// Never called: openraft 0.9 sends a snapshot only through `full_snapshot`, and its one
    /// caller of `install_snapshot` is the default `full_snapshot` (chunk by chunk), which this
    /// link replaces. The trait requires it without the `generic-snapshot-data` feature; if it
    /// were ever called, it fails like a network error rather than sending a request no node
    /// answers.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let e = std::io::Error::other("chorus sends snapshots with full_snapshot only");
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    /// How long the stream to an unreachable follower waits before trying again (openraft's
    /// default is 500 ms throughout): every 200 ms for the first ten seconds, so that a node
    /// that restarts catches up at once, then once a second — openraft reads the entries to
    /// send before each try, up to 24 MiB. Ten, not two: a node stopped cleanly after uploads
    /// syncs sled's files for seconds before it exits, and a restart that came after the
    /// two seconds waited up to a second more for its first entries (`bench/experiments/catch_up.py`:
    /// 0.7–0.9 s from the new process's session to its first applied entry).
    fn backoff(&self) -> Backoff {
        let soon = std::iter::repeat_n(UNREACHABLE_RETRY, UNREACHABLE_RETRIES_SOON);
        Backoff::new(soon.chain(std::iter::repeat(UNREACHABLE_RETRY_LATER)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.send(PeerRequest::Vote(rpc), &option, |r| match r {
            PeerResponse::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use storage::{Command, QueueCommand, Request, TrackCommand};

    #[test]
    fn a_late_append_answer_is_a_timeout_and_a_missing_session_unreachable() {
        // openraft backs a stream off for 200 ms after Unreachable, not after Timeout.
        let late = TransportError::Timeout(2, Duration::from_millis(150));
        assert!(matches!(
            append_error(1, late),
            RPCError::Timeout(Timeout {
                action: RPCTypes::AppendEntries,
                id: 1,
                target: 2,
                ..
            })
        ));
        let gone = TransportError::NotConnected(2);
        assert!(matches!(append_error(1, gone), RPCError::Unreachable(_)));
        let garbled = TransportError::Malformed(2, "?".into());
        assert!(matches!(append_error(1, garbled), RPCError::Network(_)));
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                dedupe_key: None,
                at_ms: 0,
                command,
            }),
        }
    }

    fn chunk(index: u64) -> Entry {
        let command = Command::Tracks(TrackCommand::put_chunk(
            1,
            index as u32,
            vec![0; 1024 * 1024],
        ));
        entry(index, command)
    }

    fn log_id(index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    /// Runs `answers` (one per frame, frame k ending at log index 10·(k+1)) through
    /// `FrameProgress` as `send_frames` does.
    #[allow(clippy::result_large_err)] // openraft's RPCError, as in `extract`
    fn outcome(
        answers: Vec<Option<RpcResult<AppendEntriesResponse<u64>>>>,
        frames: usize,
        cut_short: bool,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let mut progress = FrameProgress::default();
        for (k, answer) in answers.into_iter().enumerate() {
            match progress.take(k, log_id(10 * (k as u64 + 1)), answer) {
                FrameOutcome::Next => {}
                FrameOutcome::Stop => break,
                FrameOutcome::Return(result) => return *result,
            }
        }
        Ok(progress.report(frames, cut_short))
    }

    #[test]
    fn openraft_hears_only_the_unbroken_run_of_frames_the_follower_took() {
        let ok = || Some(Ok(AppendEntriesResponse::Success));
        let conflict = || Some(Ok(AppendEntriesResponse::Conflict));
        let show = |r: RpcResult<AppendEntriesResponse<u64>>| format!("{r:?}");
        // Every frame taken: all of it.
        assert_eq!(
            show(outcome(vec![ok(), ok(), ok()], 3, false)),
            show(Ok(AppendEntriesResponse::Success))
        );
        // The first frame's own answer, whatever it is.
        assert_eq!(
            show(outcome(vec![conflict(), ok()], 2, false)),
            show(Ok(AppendEntriesResponse::Conflict))
        );
        let partial = Some(Ok(AppendEntriesResponse::PartialSuccess(log_id(4))));
        assert_eq!(
            show(outcome(vec![partial, ok()], 2, false)),
            show(Ok(AppendEntriesResponse::PartialSuccess(log_id(4))))
        );
        // A later frame refused, late, or followed by one that succeeded anyway: up to the
        // last frame of the unbroken run.
        let up_to_20 = show(Ok(AppendEntriesResponse::PartialSuccess(log_id(20))));
        assert_eq!(
            show(outcome(vec![ok(), ok(), conflict()], 3, false)),
            up_to_20
        );
        assert_eq!(show(outcome(vec![ok(), ok(), None], 3, false)), up_to_20);
        assert_eq!(
            show(outcome(vec![ok(), ok(), None, ok()], 4, false)),
            up_to_20
        );
        // Frames left unsent (the in-flight budget): what was sent, not all of it.
        assert_eq!(show(outcome(vec![ok(), ok()], 2, true)), up_to_20);
    }

    #[test]
    fn a_request_becomes_frames_in_order_and_a_heartbeat_one_empty_frame() {
        assert_eq!(into_frames(Vec::new(), MAX_APPEND_BYTES).len(), 1);
        let chunks: Vec<Entry> = (1..=20).map(chunk).collect();
        let frames = into_frames(chunks, MAX_APPEND_BYTES);
        assert!(frames.len() > 1, "{}", frames.len());
        let indexes: Vec<u64> = frames.iter().flatten().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=20).collect::<Vec<_>>());
        for frame in &frames {
            assert!(!frame.is_empty());
            let bytes: usize = frame.iter().map(entry_size).sum();
            assert!(frame.len() == 1 || bytes <= MAX_APPEND_BYTES, "{bytes}");
        }
    }

    #[test]
    fn frames_are_cut_by_audio_bytes_not_by_small_writes() {
        let small: Vec<Entry> = (0..512)
            .map(|i| entry(i, Command::Queue(QueueCommand::Clear)))
            .collect();
        assert_eq!(entries_within(&small, MAX_APPEND_BYTES), 512);

        let chunks: Vec<Entry> = (0..20).map(chunk).collect();
        let fits = entries_within(&chunks, MAX_APPEND_BYTES);
        assert!((1..20).contains(&fits), "{fits}");
        let bytes: usize = chunks[..fits].iter().map(entry_size).sum();
        assert!(bytes <= MAX_APPEND_BYTES);

        // One entry larger than the budget still goes (alone), or replication would stall.
        assert_eq!(entries_within(&chunks, 1000), 1);
        assert_eq!(entries_within(&[], 1000), 0);
    }
}
