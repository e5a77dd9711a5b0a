//! Tasks waiting for the state machine to reach a log index: a write that wants to read its
//! own result on this node, a linearizable read waiting for its read index. Each is woken once,
//! by the apply that reaches its index, rather than on every change of openraft's metrics.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::types::LogId;

/// The waiters, by the index each waits for.
#[derive(Debug, Default)]
pub(crate) struct AppliedWaiters {
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// One past the last applied index (0: nothing applied yet; index 0 is a real entry).
    applied_end: u64,
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    /// Set when the Raft core has stopped: nothing will be applied any more.
    closed: bool,
}

/// Why [`crate::StateReader::wait_applied`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyWaitError {
    #[error("the entry was not applied here in time")]
    TimedOut,
    #[error("this node has stopped applying entries (its Raft core stopped)")]
    Closed,
}

impl AppliedWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that everything up to `last` is applied and wakes the waiters it satisfies.
    pub(crate) fn applied(&self, last: Option<LogId>) {
        let end = last.map_or(0, |l| l.index + 1);
        let mut w = self.lock();
        if end <= w.applied_end {
            return;
        }
        w.applied_end = end;
        let still_waiting = w.waiting.split_off(&end);
        let ready = std::mem::replace(&mut w.waiting, still_waiting);
        drop(w);
        for sender in ready.into_values().flatten() {
            let _ = sender.send(());
        }
    }

    /// `None` when `index` is applied already, else a receiver that fires once it is (and fails
    /// if the waiters are closed first).
    pub(crate) fn wait(&self, index: u64) -> Result<Option<oneshot::Receiver<()>>, ApplyWaitError> {
        let mut w = self.lock();
        if index < w.applied_end {
            return Ok(None);
        }
        if w.closed {
            return Err(ApplyWaitError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        w.waiting.entry(index).or_default().push(tx);
        Ok(Some(rx))
    }

    /// Fails every waiter, now and later, that is not satisfied yet.
    pub(crate) fn close(&self) {
        let mut w = self.lock();
        w.closed = true;
        w.waiting.clear();
    }
}
