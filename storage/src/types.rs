//! The openraft type configuration shared by every crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Applied, Request};

/// What the cluster knows about a member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChorusNode {
    /// `host:port` of the public HTTP API.
    pub http_addr: String,
    /// `host:port` of the node-to-node transport (ractor_cluster).
    pub raft_addr: String,
}

impl fmt::Display for ChorusNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={} raft={}", self.http_addr, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// chorus' Raft types: log entries carry a [`Request`]; snapshots are files.
    pub TypeConfig:
        D = Request,
        R = Applied,
        NodeId = u64,
        Node = ChorusNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ChorusNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ChorusNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
