//! The state machine against real sled files in a temporary directory.

use std::collections::HashSet;

use super::*;
use crate::command::{Command, ErrorKind, Outcome, QueueCommand, Request, TrackCommand};
use crate::state::tracks::{AudioInfo, CHUNK_SIZE, TrackMeta};
use openraft::{CommittedLeaderId, Entry as RaftEntry};

fn add(index: u64, id: u64) -> Entry {
    RaftEntry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            dedupe_key: None,
            at_ms: 0,
            command: Command::Queue(QueueCommand::Add {
                id,
                title: Some(format!("t{id}")),
                artist: Some("a".into()),
                duration: Some(60),
                by: None,
                max_per_user: 0,
            }),
        }),
    }
}

/// openraft purged the log up to a received snapshot, then the node died before installing
/// it: on the next open the state machine is brought up to the purge point from
/// `current.snap`, or the open fails with advice instead of openraft failing later.
#[tokio::test]
async fn a_state_machine_behind_the_purged_log_is_repaired_or_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    sm.apply((1..=3).map(|i| add(i, 100 + i)))
        .await
        .expect("apply");
    let covered = sm.build_snapshot().await.expect("build").meta.last_log_id;
    // Pretend the snapshot was received but its install never ran: the state is back at
    // index 1, the log purged up to the snapshot.
    sm.inner.sm.clear().expect("clear");
    let purged_at_1 = Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 1));
    sm.inner.write_lock().last_applied = purged_at_1;
    sm.repair_if_behind(covered)
        .expect("repaired from current.snap");
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, covered);
    assert_eq!(sm.reader().read(|s| s.queue.len()), 3);

    // A purge beyond every snapshot cannot be repaired here: a clear error, not a panic.
    let beyond = Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), 99));
    let err = sm
        .repair_if_behind(beyond)
        .expect_err("nothing covers index 99");
    assert!(err.to_string().contains("unreadable"), "{err}");
}

/// The `sm` tree is written by its own thread: a snapshot built right after an apply, and
/// a store opened after the previous one was dropped, still see every applied entry.
#[tokio::test]
async fn applied_entries_reach_snapshots_and_the_disk_although_written_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let last = {
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        for i in 1..=200 {
            sm.apply([add(i, 1000 + i)]).await.expect("apply");
        }
        sm.build_snapshot().await.expect("build");
        let (_fresh, _fresh_log, copy) = sent_to_a_fresh_store(&mut sm).await;
        assert_eq!(copy.reader().read(|s| s.queue.len()), 200);
        for i in 201..=210 {
            sm.apply([add(i, 1000 + i)]).await.expect("apply");
        }
        sm.applied_state().await.expect("applied").0
    };
    let (_log, mut sm) = crate::reopen(dir.path());
    assert_eq!(sm.applied_state().await.expect("applied").0, last);
    assert_eq!(sm.reader().read(|s| s.queue.len()), 210);
}

/// A node killed while installing a snapshot, after the install cleared `sm`, comes back
/// with the snapshot installed: the marker lives outside `sm`, and its log has been purged
/// up to the snapshot, so nothing else could bring it back.
#[tokio::test]
async fn an_install_interrupted_after_clearing_is_redone_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let last = {
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply((1..=3).map(|i| add(i, 100 + i)))
            .await
            .expect("apply");
        let snapshot = sm.build_snapshot().await.expect("build");
        // What install_blocking has done when the process dies mid-install.
        let inner = &sm.inner;
        inner.control.insert(INSTALLING, &[1u8]).expect("marker");
        inner.sm.clear().expect("clear");
        inner.db.db().flush().expect("flush");
        snapshot.meta.last_log_id
    };
    let (_log, mut sm) = crate::reopen(dir.path());
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, last);
    let queued = sm.reader().read(|s| s.queue.len());
    assert_eq!(queued, 3);
    assert!(
        !sm.inner
            .control
            .contains_key(INSTALLING)
            .expect("read marker")
    );
}

fn entry(index: u64, command: Command) -> Entry {
    RaftEntry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            dedupe_key: None,
            at_ms: 0,
            command,
        }),
    }
}

/// Entries `first..first + 3` that begin upload `upload_id` (the next id) and put two
/// chunks: a full one of `fill` bytes and a 10-byte tail of `fill + 1`.
fn upload(first: u64, upload_id: u64, fill: u8) -> Vec<Entry> {
    use crate::command::TrackCommand::{self, BeginUpload};
    let chunk = |index: u32, len: usize| {
        TrackCommand::put_chunk(upload_id, index, vec![fill + index as u8; len])
    };
    vec![
        entry(first, Command::Tracks(BeginUpload { owner: 1 })),
        entry(first + 1, Command::Tracks(chunk(0, CHUNK_SIZE))),
        entry(first + 2, Command::Tracks(chunk(1, 10))),
    ]
}

fn create(index: u64, upload_id: u64) -> Entry {
    entry(
        index,
        Command::Tracks(TrackCommand::Create {
            upload_id,
            by: 1,
            meta: TrackMeta {
                title: "t".into(),
                artist: "a".into(),
                album: String::new(),
                genre: String::new(),
            },
            audio: AudioInfo {
                size: CHUNK_SIZE as u64 + 10,
                chunks: 2,
                duration_ms: 1000,
            },
        }),
    )
}

fn chunks_of(fill: u8) -> [ChunkHash; 2] {
    [
        ChunkHash::of(&vec![fill; CHUNK_SIZE]),
        ChunkHash::of(&[fill + 1; 10]),
    ]
}

/// Installs `sm`'s current snapshot, as openraft sends it to another node, into a fresh
/// store (kept alive by the returned directory and log).
async fn sent_to_a_fresh_store(
    sm: &mut StateMachineStore,
) -> (tempfile::TempDir, crate::LogStore, StateMachineStore) {
    let snapshot = sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    let fresh = tempfile::tempdir().expect("temp dir");
    let (log, mut copy) = crate::open(fresh.path()).expect("open");
    copy.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    (fresh, log, copy)
}

/// Applies two uploads of the same audio (filled with 5) as tracks 1 and 2 (entries 1–8).
async fn two_tracks_of_the_same_audio(sm: &mut StateMachineStore) {
    sm.apply(upload(1, 1, 5)).await.expect("apply");
    sm.apply([create(4, 1)]).await.expect("apply");
    sm.apply(upload(5, 2, 5)).await.expect("apply");
    sm.apply([create(8, 2)]).await.expect("apply");
}

fn on_disk(sm: &StateMachineStore) -> HashSet<ChunkHash> {
    sm.inner.chunks.list().expect("list").into_iter().collect()
}

/// A track's audio is in the chunk store once its entries are applied, readable and named
/// by its hash; the same audio uploaded twice is stored once.
#[tokio::test]
async fn uploaded_audio_is_stored_once_by_its_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    two_tracks_of_the_same_audio(&mut sm).await;
    let [full, tail] = chunks_of(5);
    assert_eq!(on_disk(&sm), HashSet::from([full, tail]));
    let tracks: Vec<Vec<ChunkHash>> = sm
        .reader()
        .read(|s| s.tracks.all().map(|t| t.chunks.clone()).collect());
    assert_eq!(tracks, vec![vec![full, tail], vec![full, tail]]);
    assert_eq!(sm.reader().chunk(&tail).expect("read"), vec![6u8; 10]);
}

/// A deleted track's chunks stay until a snapshot after the delete is built (the current
/// snapshot, or a tree a crash leaves, may still name them), then go; chunks another track
/// still names stay.
#[tokio::test]
async fn released_chunks_go_with_the_next_snapshot_and_shared_ones_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    two_tracks_of_the_same_audio(&mut sm).await;
    sm.apply(upload(9, 3, 20)).await.expect("apply");
    sm.build_snapshot().await.expect("build");
    let delete = |index, track_id| {
        entry(
            index,
            Command::Tracks(TrackCommand::Delete { track_id, by: 1 }),
        )
    };
    let abort = entry(
        14,
        Command::Tracks(TrackCommand::AbortUpload { upload_id: 3 }),
    );
    sm.apply([delete(12, 1), delete(13, 2), abort])
        .await
        .expect("apply");
    assert_eq!(on_disk(&sm).len(), 4, "kept until the next snapshot");
    sm.build_snapshot().await.expect("build");
    assert!(on_disk(&sm).is_empty(), "{:?}", on_disk(&sm));

    // Shared by two tracks: deleting one keeps the chunks.
    sm.apply(upload(15, 4, 7)).await.expect("apply");
    sm.apply([create(18, 4)]).await.expect("apply");
    sm.apply(upload(19, 5, 7)).await.expect("apply");
    sm.apply([create(22, 5)]).await.expect("apply");
    let first = sm
        .reader()
        .read(|s| s.tracks.all().next().map(|t| t.id))
        .expect("a track");
    sm.apply([delete(23, first)]).await.expect("apply");
    sm.build_snapshot().await.expect("build");
    assert_eq!(on_disk(&sm), HashSet::from(chunks_of(7)));
}

/// The writer syncs the chunk files a batch names before writing it: once the tree holds
/// the upload, nothing of the chunks is left in the page cache only.
#[tokio::test]
async fn the_tree_never_names_a_chunk_that_is_not_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    sm.apply(upload(1, 1, 5)).await.expect("apply");
    sm.inner.sm_writer.drain().expect("drain");
    let chunks_dir = dir.path().join("chunks");
    assert_eq!(
        crate::durable::unsynced::pages_under(&chunks_dir).expect("cachestat"),
        0
    );
}

/// A node killed after an apply wrote a chunk file but before the tree named it finds the
/// file unnamed at the next open and removes it; the entry applied again writes it anew.
#[tokio::test]
async fn a_chunk_file_nothing_names_is_swept_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stray = ChunkHash::of(b"stray");
    {
        let (_log, mut sm) = crate::open(dir.path()).expect("open");
        sm.apply(upload(1, 1, 5)).await.expect("apply");
        sm.apply([create(4, 1)]).await.expect("apply");
        sm.inner.chunks.put(&stray, b"stray").expect("put");
    }
    let (_log, sm) = crate::reopen(dir.path());
    assert_eq!(on_disk(&sm), HashSet::from(chunks_of(5)));
    assert!(sm.reader().missing_chunks().is_empty());
}

/// A received snapshot naming chunks this node lacks is refused before anything here is
/// replaced; with the chunks fetched first it installs, and this node's own chunks that the
/// new state does not name go.
#[tokio::test]
async fn an_install_needs_every_chunk_the_snapshot_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    sm.apply(upload(1, 1, 5)).await.expect("apply");
    sm.apply([create(4, 1)]).await.expect("apply");
    let snapshot = sm.build_snapshot().await.expect("build");
    let path = dir.path().join("snapshots").join(CURRENT);
    let named = chunks_named_by_snapshot(&path).expect("names");
    assert_eq!(named, HashSet::from(chunks_of(5)));

    let fresh = tempfile::tempdir().expect("temp dir");
    let (_fresh_log, mut other) = crate::open(fresh.path()).expect("open");
    other.apply(upload(1, 1, 30)).await.expect("apply");
    let err = other
        .install_snapshot(
            &snapshot.meta,
            Box::new(tokio::fs::File::open(&path).await.expect("open")),
        )
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("2 audio chunks"), "{err}");
    assert_eq!(
        other.reader().read(|s| s.tracks.uploads().count()),
        1,
        "untouched"
    );

    for hash in &named {
        let bytes = sm.reader().chunk(hash).expect("read");
        other
            .reader()
            .chunk_store()
            .put_received(hash, &bytes)
            .expect("put");
    }
    other
        .install_snapshot(
            &snapshot.meta,
            Box::new(tokio::fs::File::open(&path).await.expect("open")),
        )
        .await
        .expect("installed");
    assert_eq!(other.reader().read(|s| s.tracks.len()), 1);
    assert_eq!(on_disk(&other), named, "the old upload's chunks went");
}

fn request(key: &str, command: Command) -> Request {
    Request {
        dedupe_key: Some(key.into()),
        at_ms: 0,
        command,
    }
}

fn vote(id: u64) -> Command {
    Command::Queue(QueueCommand::Vote {
        id,
        up: true,
        by: None,
    })
}

/// The leader groups writes into one entry: each is applied as if it were an entry of its
/// own (its dedupe key, its own result), and the batch answers each in order.
#[tokio::test]
async fn a_batch_entry_applies_and_answers_each_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    sm.apply([add(1, 7)]).await.expect("apply");
    let batch = Command::Batch(vec![
        request("a", vote(7)),
        request("b", vote(8)),
        // A retry of "a" inside the same batch: answered with the first result.
        request("a", vote(7)),
        request("c", Command::Batch(vec![])),
    ]);
    let entry = RaftEntry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 2),
        payload: EntryPayload::Normal(Request {
            dedupe_key: None,
            at_ms: 0,
            command: batch,
        }),
    };
    let reader = sm.reader();
    let waiting = reader.wait_applied(
        2,
        tokio::time::Instant::now() + std::time::Duration::from_secs(5),
    );
    let (responses, woken) = tokio::join!(sm.apply([entry]), waiting);
    assert_eq!(woken, Ok(()), "a waiter for index 2 is woken by its apply");
    let responses = responses.expect("apply");
    let Ok(Outcome::Batch(each)) = &responses[0].result else {
        panic!("not a batch answer: {responses:?}");
    };
    assert_eq!(each.len(), 4);
    assert!(matches!(&each[0].result, Ok(Outcome::Track(t)) if t.votes == 1));
    assert!(matches!(&each[1].result, Err(e) if e.kind == ErrorKind::NotFound));
    assert!(each[2].deduplicated && each[2].result == each[0].result);
    assert!(matches!(&each[3].result, Err(e) if e.kind == ErrorKind::Invalid));
    let votes = sm.reader().read(|s| s.queue.track(7).map(|t| t.votes));
    assert_eq!(
        votes,
        Some(1),
        "the retry inside the batch did not vote twice"
    );
}

/// When the Raft core stops, waits for entries not applied yet fail at once (the request
/// answers "shutting down"), while entries already applied still count.
#[tokio::test]
async fn closing_the_waiters_fails_waits_for_unapplied_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    sm.apply([add(1, 7)]).await.expect("apply");
    let reader = sm.reader();
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let waiting = reader.wait_applied(5, far);
    let (result, ()) = tokio::join!(waiting, async { reader.close_waiters() });
    assert_eq!(result, Err(ApplyWaitError::Closed));
    assert_eq!(
        reader.wait_applied(6, far).await,
        Err(ApplyWaitError::Closed)
    );
    assert_eq!(reader.wait_applied(1, far).await, Ok(()));
}

fn next_item(feed: &mut tokio::sync::broadcast::Receiver<FeedItem>) -> FeedItem {
    feed.try_recv().expect("a published item")
}

/// Watchers hear each entry's visible changes with its index, in log order, only once it is
/// applied; entries that change nothing visible (an upload's chunks) are not published, and an
/// install says the whole state was replaced.
#[tokio::test]
async fn applied_changes_are_published_in_log_order_with_their_index() {
    use crate::change_feed::StateChange;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    let mut feed = sm.reader().subscribe_changes();
    sm.apply(upload(1, 1, 5)).await.expect("apply");
    sm.apply([create(4, 1), add(5, 77), entry(6, vote(77))])
        .await
        .expect("apply");
    let FeedItem::Applied(first) = next_item(&mut feed) else {
        panic!("an applied entry");
    };
    assert_eq!(first.index, 4);
    assert!(matches!(&first.changes[..], [StateChange::TrackAdded(t)] if t.id == 1));
    let FeedItem::Applied(second) = next_item(&mut feed) else {
        panic!("an applied entry");
    };
    assert_eq!(second.index, 5);
    assert!(matches!(&second.changes[..], [StateChange::Queued(t)] if t.id == 77));
    let FeedItem::Applied(third) = next_item(&mut feed) else {
        panic!("an applied entry");
    };
    assert_eq!(third.index, 6);
    assert!(matches!(&third.changes[..], [StateChange::Voted(t)] if t.id == 77 && t.votes == 1));
    assert!(feed.try_recv().is_err(), "nothing else was published");

    sm.build_snapshot().await.expect("build");
    let mut watched = sm.reader().subscribe_changes();
    let snapshot = sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert!(matches!(
        next_item(&mut watched),
        FeedItem::Replaced { index: 6 }
    ));
}

/// The whole archive `prepared` writes.
fn archive_of(prepared: &crate::backup::Backup) -> Vec<u8> {
    let mut archive = Vec::new();
    prepared
        .write(|piece| {
            archive.extend_from_slice(&piece);
            Ok(())
        })
        .expect("write");
    archive
}

/// A prepared backup streams the state as it was when it was prepared, whatever is deleted and
/// collected meanwhile; restored into a new store, it has the same tracks, audio and queue, the
/// new cluster's membership, and a vote at the backup's term.
#[tokio::test]
async fn a_backup_restores_into_a_new_store_as_it_was_when_prepared() {
    use crate::backup;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    two_tracks_of_the_same_audio(&mut sm).await;
    sm.apply([add(9, 900), add(10, 901)]).await.expect("apply");
    let prepared = sm.reader().prepare_backup().await.expect("prepare");
    let header = prepared.header().clone();
    assert_eq!(
        (
            header.tracks,
            header.queued,
            header.chunks,
            header.last_log_id.index
        ),
        (2, 2, 2, 10)
    );
    // Every track deleted and its chunks collected before the archive is written.
    let delete = |index, track_id| {
        entry(
            index,
            Command::Tracks(TrackCommand::Delete { track_id, by: 1 }),
        )
    };
    sm.apply([delete(11, 1), delete(12, 2)])
        .await
        .expect("apply");
    sm.build_snapshot().await.expect("build");
    assert!(on_disk(&sm).is_empty());
    let archive = archive_of(&prepared);
    assert_eq!(archive.len() as u64, prepared.archive_len());
    drop(prepared);
    let leftovers = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("list")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    assert_eq!(leftovers, 0, "a dropped backup removes its files");

    let members = std::collections::BTreeMap::from([(7, crate::ChorusNode::default())]);
    let target = tempfile::tempdir().expect("temp dir");
    let data = target.path().join("node7");
    let mut seen = 0;
    let staged =
        backup::restore(&archive[..], &data, 7, &members, &mut |n| seen = n).expect("restore");
    assert_eq!(seen, archive.len() as u64);
    assert_eq!(staged.header(), &header);
    staged.commit().expect("commit");

    let (mut log, mut copy) = crate::open(&data).expect("open the restored store");
    let (applied, membership) = copy.applied_state().await.expect("applied");
    assert_eq!(applied, Some(header.last_log_id));
    assert_eq!(
        membership.membership().voter_ids().collect::<Vec<_>>(),
        vec![7]
    );
    use openraft::storage::RaftLogStorage;
    let vote = log.read_vote().await.expect("vote").expect("a vote");
    assert_eq!(vote.leader_id().term, 1);
    assert_eq!(
        copy.reader().read(|s| (s.tracks.len(), s.queue.len())),
        (2, 2)
    );
    let [full, tail] = chunks_of(5);
    assert_eq!(
        copy.reader().chunk(&full).expect("read"),
        vec![5u8; CHUNK_SIZE]
    );
    assert_eq!(copy.reader().chunk(&tail).expect("read"), vec![6u8; 10]);
    let current = copy
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("one");
    assert_eq!(current.meta.last_membership, membership);
}

/// An archive cut short anywhere, or with any byte changed, is refused with a clear error and
/// leaves nothing behind; so is a restore over a directory that holds data, unless asked.
#[tokio::test]
async fn a_truncated_or_altered_backup_restores_nothing() {
    use crate::backup::{self, RestoreError};
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = crate::open(dir.path()).expect("open");
    two_tracks_of_the_same_audio(&mut sm).await;
    let prepared = sm.reader().prepare_backup().await.expect("prepare");
    let archive = archive_of(&prepared);
    let members = std::collections::BTreeMap::from([(1, crate::ChorusNode::default())]);
    let target = tempfile::tempdir().expect("temp dir");
    let data = target.path().join("node1");
    let len = archive.len();
    // Cuts and flips in the header, the state, a chunk's frame and bytes, and the digest.
    let places = [5, 12, 60, len / 3, len / 2, len - 40, len - 33, len - 1];
    for &at in &places {
        let cut = backup::restore(&archive[..at], &data, 1, &members, &mut |_| {})
            .expect_err("a truncated archive");
        assert!(
            matches!(cut, RestoreError::Damaged(_) | RestoreError::NotABackup(_)),
            "cut at {at}: {cut}"
        );
        let mut altered = archive.clone();
        altered[at] ^= 0x40;
        let err = backup::restore(&altered[..], &data, 1, &members, &mut |_| {})
            .expect_err("an altered archive");
        assert!(
            matches!(err, RestoreError::Damaged(_) | RestoreError::NotABackup(_)),
            "flip at {at}: {err}"
        );
        assert!(backup::verify(&altered[..], &mut |_| {}).is_err());
    }
    let extra = [&archive[..], b"x"].concat();
    assert!(backup::restore(&extra[..], &data, 1, &members, &mut |_| {}).is_err());
    let left: Vec<_> = std::fs::read_dir(target.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "nothing half-restored: {left:?}");

    assert_eq!(
        backup::verify(&archive[..], &mut |_| {})
            .expect("whole")
            .tracks,
        2
    );
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("something"), b"x").expect("write");
    let err = backup::check_target(&data, false).expect_err("not empty");
    assert!(err.to_string().contains("--force"), "{err}");
    backup::check_target(&data, true).expect("replacing is allowed when asked");
    backup::restore(&archive[..], &data, 1, &members, &mut |_| {})
        .expect("restore")
        .commit()
        .expect("commit");
    assert!(
        !data.join("something").exists(),
        "the old data was replaced"
    );
    let (_log, copy) = crate::reopen(&data);
    assert_eq!(copy.reader().read(|s| s.tracks.len()), 2);
}
