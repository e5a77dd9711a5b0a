//! Batching of the writes a follower forwards to the leader.
//!
//! One ractor_cluster RPC per forwarded write costs a frame, a task and several actor hops on
//! each side. The [`Forwarder`] sends the writes waiting on this node to the leader as one
//! `ClientWrites` RPC, each write with what to read back after it, if anything ([`crate::batch`]:
//! a lone write leaves at once, under load the writes that arrive while earlier batches are in
//! flight leave together). The leader queues a batch's writes to its proposer together, so they
//! normally share one log entry as well.
//!
//! Only small writes are batched; a write carrying audio (up to 1 MiB) goes alone, as a
//! `ClientWrites` of one sent by `Replica::route`, so that a batch stays a small frame.

use std::collections::BTreeMap;
use std::time::Duration;

use storage::{ReadBack, Request};
use tokio::sync::oneshot;

use crate::batch::{self, Batcher, Limits};
use crate::protocol::{ForwardError, PeerRequest, PeerResponse, WriteReceipt};
use crate::transport::{Transport, TransportError};

const LIMITS: Limits = Limits {
    // One batch under way at a time: what arrives meanwhile leaves together in the next. Two
    // measured ~10 % fewer writes/s at 64 clients (smaller batches, more RPCs and entries);
    // the leader's proposer still keeps two entries in flight.
    in_flight: 1,
    max_items: 512,
    max_bytes: 1024 * 1024,
};
/// Writes larger than this (audio chunks) are not batched.
pub(crate) const MAX_BATCHED_SIZE: usize = 64 * 1024;

pub(crate) type ForwardResult = Result<Result<WriteReceipt, ForwardError>, TransportError>;

struct Pending {
    leader: u64,
    request: Request,
    read_back: Option<ReadBack>,
    reply: oneshot::Sender<ForwardResult>,
}

impl batch::Item for Pending {
    fn size(&self) -> usize {
        self.request.approx_size()
    }
    fn abandoned(&self) -> bool {
        // Its caller has had its answer (unknown outcome); do not propose the write.
        self.reply.is_closed()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    batcher: Batcher<Pending>,
}

impl Forwarder {
    pub(crate) fn start(transport: Transport, attempt_timeout: Duration) -> Self {
        let batcher = Batcher::start(LIMITS, move |batch: Vec<Pending>| {
            let transport = transport.clone();
            async move {
                // Normally one leader; right after a leader change some may name the old one.
                let mut by_leader: BTreeMap<u64, Vec<Pending>> = BTreeMap::new();
                for pending in batch {
                    by_leader.entry(pending.leader).or_default().push(pending);
                }
                let sends = by_leader
                    .into_iter()
                    .map(|(leader, group)| send_batch(&transport, leader, group, attempt_timeout));
                futures_util::future::join_all(sends).await;
            }
        });
        Self { batcher }
    }

    /// Proposes `request` on `leader` in the next batch, with what to read back after it;
    /// waits at most `timeout` for the answer.
    pub(crate) async fn write(
        &self,
        leader: u64,
        request: Request,
        read_back: Option<ReadBack>,
        timeout: Duration,
    ) -> ForwardResult {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            leader,
            request,
            read_back,
            reply,
        };
        if self.batcher.push(pending).is_err() {
            return Err(TransportError::Unreachable(
                leader,
                "the write forwarder has stopped".into(),
            ));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TransportError::Unreachable(
                leader,
                "the forwarded batch was dropped".into(),
            )),
            Err(_) => Err(TransportError::Timeout(leader, timeout)),
        }
    }
}

async fn send_batch(transport: &Transport, leader: u64, group: Vec<Pending>, timeout: Duration) {
    let (writes, mut replies): (Vec<(Request, Option<ReadBack>)>, Vec<_>) = group
        .into_iter()
        .map(|p| ((p.request, p.read_back), p.reply))
        .unzip();
    let sent = writes.len();
    let request = PeerRequest::ClientWrites(writes);
    let call = transport.call(leader, &request, timeout);
    // Once every caller has gone (each moved on to a new leader, see `Replica::route`), the
    // batch stops waiting: it holds the forwarder's one in-flight slot, and the writes queued
    // behind it are for the new leader.
    let everyone_gone = futures_util::future::join_all(replies.iter_mut().map(|r| r.closed()));
    let answer = tokio::select! {
        answer = call => answer,
        _ = everyone_gone => return,
    };
    match answer {
        Ok(PeerResponse::ClientWrites(results)) if results.len() == sent => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(_) => {
            let wrong = TransportError::Malformed(leader, "answer of the wrong kind".into());
            for reply in replies {
                let _ = reply.send(Err(wrong.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
