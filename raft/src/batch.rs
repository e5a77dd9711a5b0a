//! [`Batcher`]: a queue that hands what is waiting in it to a sender in batches, with a bounded
//! number of batches in flight.
//!
//! A lone item leaves at once. Under load the sender's slots are all busy, items pile up in the
//! queue, and the next free slot takes all of them (up to a count and a byte budget): the batch
//! size follows the load without any timer. Used twice: a follower forwarding writes to the
//! leader (`crate::forward`) and the leader proposing writes to Raft (`crate::propose`).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// What the batcher needs to know about an item.
pub(crate) trait Item: Send + 'static {
    /// Roughly how many bytes the item adds to a batch.
    fn size(&self) -> usize;
    /// True when nobody waits for the item any more (its caller timed out): it is dropped.
    fn abandoned(&self) -> bool;
}

/// Limits of one batcher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub in_flight: usize,
    pub max_items: usize,
    /// A batch stops growing at this many bytes (a first item larger than this goes alone).
    pub max_bytes: usize,
}

pub(crate) struct Batcher<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Item> Batcher<T> {
    /// Starts the batching task; it ends when the last handle is dropped. `send` carries out one
    /// batch; its slot is free again when the future it returns completes.
    pub(crate) fn start<F, Fut>(limits: Limits, send: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, limits, send));
        Self { queue }
    }

    /// Queues `item`; gives it back if the batching task has stopped.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        self.queue.send(item).map_err(|e| e.0)
    }
}

async fn run<T, F, Fut>(mut queue: mpsc::UnboundedReceiver<T>, limits: Limits, send: F)
where
    T: Item,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    // An item taken from the queue that did not fit in the previous batch.
    let mut carried: Option<T> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // Waiting for a free slot is what lets the next batch fill up under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.size();
        let mut batch = vec![first];
        while batch.len() < limits.max_items && bytes < limits.max_bytes {
            let Ok(item) = queue.try_recv() else { break };
            if bytes + item.size() > limits.max_bytes {
                carried = Some(item);
                break;
            }
            bytes += item.size();
            batch.push(item);
        }
        batch.retain(|item| !item.abandoned());
        if batch.is_empty() {
            continue;
        }
        let sending = send(batch);
        tokio::spawn(async move {
            sending.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    struct Job {
        size: usize,
        done: oneshot::Sender<usize>,
    }

    impl Item for Job {
        fn size(&self) -> usize {
            self.size
        }
        fn abandoned(&self) -> bool {
            self.done.is_closed()
        }
    }

    /// Batches of a sender that holds every batch until released, recording their sizes.
    fn gated(limits: Limits) -> Gated {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (s, g) = (sizes.clone(), gate.clone());
        let batcher = Batcher::start(limits, move |jobs: Vec<Job>| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                s.lock().unwrap().push(jobs.len());
                g.acquire().await.unwrap().forget();
                for job in jobs {
                    let _ = job.done.send(1);
                }
            }
        });
        (batcher, sizes, gate)
    }

    fn job(size: usize) -> (Job, oneshot::Receiver<usize>) {
        let (done, rx) = oneshot::channel();
        (Job { size, done }, rx)
    }

    type Gated = (Batcher<Job>, Arc<Mutex<Vec<usize>>>, Arc<Semaphore>);

    /// A one-slot batcher whose slot is taken by a first job, held until the gate opens.
    async fn with_slot_taken(max_bytes: usize) -> (Gated, oneshot::Receiver<usize>) {
        let limits = Limits {
            in_flight: 1,
            max_items: 100,
            max_bytes,
        };
        let (batcher, sizes, gate) = gated(limits);
        let (first, first_done) = job(1);
        batcher.push(first).ok().unwrap();
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        ((batcher, sizes, gate), first_done)
    }

    #[tokio::test]
    async fn items_waiting_while_slots_are_busy_leave_together() {
        // The first goes alone; the next five wait for its slot and then leave as one batch.
        let ((batcher, sizes, gate), first_done) = with_slot_taken(1000).await;
        let mut rest = Vec::new();
        for _ in 0..5 {
            let (j, rx) = job(1);
            batcher.push(j).ok().unwrap();
            rest.push(rx);
        }
        gate.add_permits(2);
        first_done.await.unwrap();
        for rx in rest {
            rx.await.unwrap();
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 5]);
    }

    #[tokio::test]
    async fn batches_respect_the_byte_budget_and_skip_abandoned_items() {
        let ((batcher, sizes, gate), blocker_done) = with_slot_taken(10).await;
        let mut waiting = Vec::new();
        for size in [4, 4, 4, 20] {
            let (j, rx) = job(size);
            batcher.push(j).ok().unwrap();
            waiting.push(rx);
        }
        let (gone, gone_rx) = job(1);
        batcher.push(gone).ok().unwrap();
        drop(gone_rx);
        gate.add_permits(10);
        blocker_done.await.unwrap();
        for rx in waiting {
            rx.await.unwrap();
        }
        // 4+4 fit in 10 bytes; the third 4 starts the next batch; 20 is over budget and goes alone.
        assert_eq!(*sizes.lock().unwrap(), vec![1, 2, 1, 1]);
    }
}
