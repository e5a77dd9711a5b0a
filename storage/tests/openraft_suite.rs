//! openraft's own storage test suite, run against the real store (sled metadata and state
//! machine, segment-file log) in a temp dir, case by case (`Suite::test_all` runs them all and
//! includes one this store refuses on purpose; see below).

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use storage::{LogStore, StateMachineStore, TypeConfig};
use tempfile::TempDir;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) =
            storage::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

type S = Suite<TypeConfig, LogStore, StateMachineStore, DiskBuilder, TempDir>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        fn cases() -> Vec<(&'static str, fn(LogStore, StateMachineStore) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError<u64>>>>>)> {
            vec![$((stringify!($name), |l, s| Box::pin(S::$name(l, s)))),*]
        }
    };
}

cases!(
    last_membership_in_log_initial,
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_initial,
    get_membership_from_log_and_empty_sm,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    // Left out: get_initial_state_membership_from_log_and_sm appends entry 3 to a log that ends
    // at entry 1. openraft never leaves a gap in a log, and the segment log refuses one (an
    // append must follow the last entry, or start afresh after a purge past the end).
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_log_ids,
    // Left out: get_initial_state_re_apply_committed saves a committed index and expects it
    // back. This store keeps none (the leader may commit before its own log flush; see
    // `LogStore::save_committed`), and a restarted node learns it from the leader.
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    try_get_log_entry,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_since_11,
    delete_logs_since_0,
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[test]
fn openraft_storage_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = Vec::new();
    for (name, case) in cases() {
        let result = rt.block_on(async {
            let (_dir, log, sm) = DiskBuilder.build().await?;
            case(log, sm).await
        });
        if let Err(e) = result {
            failed.push(format!("{name}: {e}"));
        }
    }
    if let Err(e) = rt.block_on(S::transfer_snapshot(&DiskBuilder)) {
        failed.push(format!("transfer_snapshot: {e}"));
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}
