//! What each applied entry changed, for whoever watches (the API's live event streams).
//!
//! `apply` records a [`StateChange`] for every visible change to the queue, the history and the
//! library; the state machine publishes them per log index, in log order, after the entry is
//! applied (so a reader that hears of index `i` finds the state at `i` or later). The index is
//! the same on every node, so a watcher that knows "everything up to `i`" can continue on any
//! node. A snapshot install replaces the state without entries: it is published as
//! [`FeedItem::Replaced`], and a watcher must start again from the whole state.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::state::queue::{PlayedTrack, QueuedTrack};
use crate::state::tracks::Track;

/// Items a watcher may fall behind by before it hears [`broadcast::error::RecvError::Lagged`]
/// (and must start again from the whole state).
const CAPACITY: usize = 4096;

/// One visible change made by an applied entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// A track joined the queue.
    Queued(QueuedTrack),
    /// A queued track's votes changed (the track as it is now).
    Voted(QueuedTrack),
    /// A track left the queue without being played (removed, or its upload deleted).
    Unqueued(u64),
    /// The top of the queue was played: it left the queue and ended the history.
    Played(PlayedTrack),
    /// The queue and the history were emptied.
    Cleared,
    /// `votes` of the `needed` users want the playing track skipped (not yet enough).
    SkipVoted {
        votes: u32,
        needed: u32,
    },
    TrackAdded(Track),
    TrackUpdated(Track),
    TrackRemoved(u64),
}

/// The changes of one applied log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChanges {
    pub index: u64,
    pub changes: Vec<StateChange>,
}

#[derive(Debug, Clone)]
pub enum FeedItem {
    Applied(Arc<AppliedChanges>),
    /// A snapshot replaced the whole state as of `index`; no changes are published for it.
    Replaced {
        index: u64,
    },
}

/// The sending side, held by the state machine.
#[derive(Debug)]
pub(crate) struct ChangeFeed {
    sender: broadcast::Sender<FeedItem>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(CAPACITY),
        }
    }
}

impl ChangeFeed {
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.sender.subscribe()
    }

    /// Publishes `items` in order. Nobody listening is not an error.
    pub(crate) fn publish(&self, items: impl IntoIterator<Item = FeedItem>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for item in items {
            let _ = self.sender.send(item);
        }
    }
}
