//! Checking this node's chunk files and fetching what is damaged or missing from its peers.

use super::{Replica, ReplicaError};

/// What [`Replica::verify_and_repair_chunks`] found and did.
#[derive(Debug, Clone, Default)]
pub struct ChunkRepair {
    /// The check of every chunk file (the damaged ones were removed).
    pub verified: storage::chunks::VerifyReport,
    /// Chunks the state names that this node lacked after the check (the damaged ones too).
    pub missing: Vec<storage::ChunkHash>,
    /// What was fetched of them from peers, and what could not be.
    pub fetched: crate::chunk_fetch::Fetched,
}

impl Replica {
    /// The other members, the leader first: where to fetch audio chunks from.
    pub(crate) fn chunk_sources(&self) -> Vec<u64> {
        let m = self.inner.raft.metrics().borrow().clone();
        let me = self.inner.id;
        let leader = m.current_leader.filter(|&l| l != me);
        let others = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|&id| id != me && Some(id) != leader);
        leader.into_iter().chain(others).collect()
    }

    /// Checks every chunk file against its hash (a damaged one is removed), then fetches from
    /// peers every chunk the state names that this node lacks. Blocking work runs on the
    /// blocking pool.
    pub async fn verify_and_repair_chunks(&self) -> Result<ChunkRepair, ReplicaError> {
        let store = self.inner.reader.chunk_store().clone();
        let verified = tokio::task::spawn_blocking(move || store.verify_all())
            .await
            .map_err(|e| ReplicaError::Storage(e.to_string()))?
            .map_err(|e| ReplicaError::Storage(format!("checking the chunk files: {e}")))?;
        let reader = self.inner.reader.clone();
        let missing = tokio::task::spawn_blocking(move || reader.missing_chunks())
            .await
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let fetched = crate::chunk_fetch::fetch(
            &self.inner.transport,
            &self.chunk_sources(),
            self.inner.reader.chunk_store(),
            missing.clone(),
        )
        .await;
        Ok(ChunkRepair {
            verified,
            missing,
            fetched,
        })
    }
}
