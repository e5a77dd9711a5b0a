//! The [`QueueActor`]: the queue's writes and reads on this node, and the live event streams
//! of every client connected here ([`LiveFeed`]).

use axum::body::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::Replica;
use storage::{
    Command, FeedItem, Outcome, PlayedTrack, QueueCommand, QueuedTrack, ReadBack, ReadBackValue,
};
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;
use crate::events::{self, Frame, LiveFeed};
use crate::extract::Consistency;
use crate::{respond, unexpected};

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

/// A queue write's outcome, and the queue right after it when it was asked for.
pub type Written = (Outcome, Option<Vec<QueuedTrack>>);

pub enum QueueMsg {
    /// Add, remove, vote, unvote or skip; `with_queue` also reads the queue right after it.
    Write {
        cmd: QueueCommand,
        key: Option<String>,
        with_queue: bool,
        reply: Reply<Written>,
    },
    PlayNext(Option<String>, Reply<PlayedTrack>),
    Clear(Option<String>, Reply<()>),
    /// `(offset, limit)` of the queue, and its whole length.
    Queue(
        Consistency,
        (usize, usize),
        Reply<(Vec<QueuedTrack>, usize)>,
    ),
    Metadata(u64, Consistency, Reply<QueuedTrack>),
    History(Consistency, Reply<Vec<PlayedTrack>>),
    /// A live event stream for `/events` (see [`crate::events`]).
    Subscribe {
        last_seen: Option<u64>,
        reply: Reply<mpsc::Receiver<Bytes>>,
    },
    /// From the state machine's change feed.
    Feed(FeedItem),
    /// The change feed went on without us: changes were missed.
    FeedLagged,
    /// The node is stopping: end the live streams.
    CloseStreams,
}

impl ractor::Message for QueueMsg {}

/// Owns the queue domain on this node: writes and reads of the queue, and the live event
/// streams of every browser connected here ([`LiveFeed`]).
pub struct QueueActor;

pub struct QueueActorState {
    replica: Replica,
    live: LiveFeed,
}

/// The `state` event for this node's applied state.
fn read_state_frame(replica: &Replica) -> Frame {
    replica.state().read_indexed(events::state_frame)
}

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueActorState;
    type Arguments = Replica;

    async fn pre_start(
        &self,
        myself: ActorRef<QueueMsg>,
        replica: Replica,
    ) -> Result<QueueActorState, ActorProcessingErr> {
        // Subscribed before the index is read, so nothing after that index is missed.
        let mut feed = replica.state().subscribe_changes();
        let start = replica.state().read_indexed(|_, index| index);
        tracing::debug!(start, "live feed starts after this index");
        tokio::spawn(async move {
            loop {
                let msg = match feed.recv().await {
                    Ok(item) => QueueMsg::Feed(item),
                    Err(broadcast::error::RecvError::Lagged(_)) => QueueMsg::FeedLagged,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if myself.cast(msg).is_err() {
                    break;
                }
            }
        });
        Ok(QueueActorState {
            replica,
            live: LiveFeed::starting_at(start),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        let r = state.replica.clone();
        match msg {
            QueueMsg::Subscribe { last_seen, reply } => {
                let answer = if state.live.is_closed() {
                    Err(crate::shutting_down())
                } else {
                    Ok(state.live.subscribe(last_seen, || read_state_frame(&r)))
                };
                let _ = reply.send(answer);
            }
            QueueMsg::CloseStreams => state.live.close(),
            QueueMsg::Feed(FeedItem::Applied(applied)) => {
                state.live.applied(events::change_frame(&applied));
            }
            QueueMsg::Feed(FeedItem::Replaced { .. }) | QueueMsg::FeedLagged => {
                state.live.restart(|| read_state_frame(&r));
            }
            QueueMsg::Write {
                cmd,
                key,
                with_queue,
                reply,
            } => respond(reply, write_reading_back(r, cmd, key, with_queue)),
            QueueMsg::PlayNext(key, reply) => respond(reply, async move {
                match write(&r, QueueCommand::PlayNext, key).await? {
                    Outcome::Played(p) => Ok(p),
                    other => Err(unexpected(other)),
                }
            }),
            QueueMsg::Clear(key, reply) => respond(reply, async move {
                write(&r, QueueCommand::Clear, key).await.map(|_| ())
            }),
            QueueMsg::Queue(c, (offset, limit), reply) => respond(reply, async move {
                read(&r, c, |q| (q.page(offset, limit), q.len())).await
            }),
            QueueMsg::Metadata(id, c, reply) => respond(reply, async move {
                read(&r, c, |q| q.track(id).cloned())
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("track {id} is not in the queue")))
            }),
            QueueMsg::History(c, reply) => {
                respond(reply, async move { read(&r, c, |q| q.history()).await })
            }
        }
        Ok(())
    }
}

async fn write(r: &Replica, cmd: QueueCommand, key: Option<String>) -> Result<Outcome, ApiError> {
    crate::write(r, Command::Queue(cmd), key).await
}

/// Writes `cmd` and returns its outcome, with the queue right after it (as the leader read it)
/// if `with_queue`. Either way it returns once the leader has applied the write, without
/// waiting for this node to apply it too (`Replica::write_reading_back`).
async fn write_reading_back(
    r: Replica,
    cmd: QueueCommand,
    key: Option<String>,
    with_queue: bool,
) -> Result<Written, ApiError> {
    let read_back = if with_queue {
        ReadBack::Queue
    } else {
        ReadBack::Nothing
    };
    let (receipt, value) = r
        .write_reading_back(Command::Queue(cmd), key, read_back)
        .await?;
    let queue = match value {
        ReadBackValue::Queue(queue) => Some(queue),
        ReadBackValue::Nothing => None,
    };
    Ok((receipt.applied.result?, queue))
}

async fn read<T>(
    r: &Replica,
    consistency: Consistency,
    f: impl FnOnce(&storage::state::queue::QueueState) -> T,
) -> Result<T, ApiError> {
    crate::read(r, consistency, |s| f(&s.queue)).await
}
