//! Initialising a brand-new cluster exactly once.
//!
//! Only the member with the lowest id in `cluster.toml` may initialise, and only when it and
//! every other configured member answer that they are pristine (never voted, no log). A node
//! that restarts with data, or whose data directory was wiped while the others kept theirs, never
//! initialises: it is brought up to date by the leader instead. Initialising twice would create
//! two different logs with the same entry ids, which Raft cannot reconcile.

use std::collections::BTreeMap;
use std::time::Duration;

use storage::ChorusNode;

use crate::protocol::{PeerRequest, PeerResponse};
use crate::replica::Replica;

const RETRY: Duration = Duration::from_millis(500);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn bootstrap(replica: Replica, members: BTreeMap<u64, ChorusNode>) {
    if !replica.is_pristine() {
        tracing::info!("existing raft state found; not bootstrapping");
        return;
    }
    let Some(&first) = members.keys().next() else {
        return;
    };
    if first != replica.id() {
        tracing::info!(
            initialiser = first,
            "new node; waiting for the cluster to be initialised"
        );
        return;
    }
    loop {
        if !replica.is_pristine() {
            return; // a leader reached us first
        }
        let mut all_pristine = true;
        for &peer in members.keys().filter(|&&p| p != replica.id()) {
            match replica
                .transport()
                .call(peer, &PeerRequest::Status, STATUS_TIMEOUT)
                .await
            {
                Ok(PeerResponse::Status(s)) if !s.pristine => {
                    tracing::info!(
                        peer,
                        "the cluster is already initialised; waiting for the leader to catch this node up"
                    );
                    return;
                }
                Ok(PeerResponse::Status(_)) => {}
                _ => all_pristine = false,
            }
        }
        if all_pristine {
            match replica.raft().initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initialised a new cluster")
                }
                Err(e) => tracing::warn!(error = %e, "cluster initialisation refused"),
            }
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
