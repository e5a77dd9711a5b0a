//! The voting queue (seed 004): queued tracks with votes, and the play history.
//!
//! Order: most votes first, ties in the order the tracks were added. `play_next` moves the top
//! track to the end of the history; because it is a replicated command applied once per log
//! entry, a track is played exactly once however many nodes ask at the same moment.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{Changes, decode, key_number, numbered_key};
use crate::change_feed::StateChange;
use crate::codec::CodecError;
use crate::command::{CommandError, ErrorKind, Outcome, QueueCommand};

pub const PREFIX: &[u8] = b"q/";
const TRACK: &[u8] = b"q/t/";
const HISTORY: &[u8] = b"q/h/";
const COUNTERS: &[u8] = b"q/c";
/// `q/v/<track><user>` → the user's vote for a queued track (`true` = up).
const VOTE: &[u8] = b"q/v/";
/// `q/s/<user>` → present while the user wants the playing track skipped.
const SKIP: &[u8] = b"q/s/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedTrack {
    pub id: u64,
    pub title: String,
    pub artist: String,
    /// Seconds.
    pub duration: u32,
    /// Anonymous votes (each ±1) plus one per signed-in voter (±1).
    pub votes: i64,
    /// Position in the order of additions; breaks ties between equal votes.
    pub added_seq: u64,
    /// The signed-in user who queued it (`None`: queued anonymously).
    pub added_by: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayedTrack {
    pub track: QueuedTrack,
    /// Position in the history (0 = first track ever played since the last clear).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub played_at_ms: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counters {
    next_added: u64,
    next_played: u64,
}

type OrderKey = (Reverse<i64>, u64, u64);

fn order_key(t: &QueuedTrack) -> OrderKey {
    (Reverse(t.votes), t.added_seq, t.id)
}

#[derive(Debug, Default)]
pub struct QueueState {
    tracks: HashMap<u64, QueuedTrack>,
    order: BTreeSet<OrderKey>,
    history: BTreeMap<u64, PlayedTrack>,
    counters: Counters,
    /// Per queued track, each signed-in voter's vote (`true` = up).
    voters: HashMap<u64, HashMap<u64, bool>>,
    /// How many tracks each signed-in user has in the queue (derived from `tracks`).
    added_by_user: HashMap<u64, u32>,
    /// Users who want the playing track skipped; emptied whenever another track plays.
    skippers: BTreeSet<u64>,
}

impl QueueState {
    /// The queue, most votes first.
    pub fn queue(&self) -> Vec<QueuedTrack> {
        self.page(0, usize::MAX)
    }

    /// `limit` tracks of the queue from position `offset` (0 = next to play), in play order.
    pub fn page(&self, offset: usize, limit: usize) -> Vec<QueuedTrack> {
        self.order
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|(_, _, id)| self.tracks.get(id).cloned())
            .collect()
    }

    pub fn track(&self, id: u64) -> Option<&QueuedTrack> {
        self.tracks.get(&id)
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Tracks in the history.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<PlayedTrack> {
        self.history.values().cloned().collect()
    }

    /// `user`'s vote for queued track `id`, if any (`true` = up).
    pub fn vote_of(&self, id: u64, user: u64) -> Option<bool> {
        self.voters.get(&id)?.get(&user).copied()
    }

    /// How many users want the playing track skipped.
    pub fn skip_votes(&self) -> u32 {
        u32::try_from(self.skippers.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn apply(
        &mut self,
        cmd: &QueueCommand,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        Ok(match cmd {
            QueueCommand::Add {
                id,
                title: Some(title),
                artist: Some(artist),
                duration: Some(duration),
                by,
                max_per_user,
            } => {
                if self.tracks.contains_key(id) {
                    return Ok(Err(CommandError::new(
                        ErrorKind::AlreadyQueued,
                        format!("track {id} is already in the queue; vote for it instead"),
                    )));
                }
                if *max_per_user > 0 {
                    let Some(user) = by else {
                        return Ok(Err(CommandError::new(
                            ErrorKind::SignInRequired,
                            format!(
                                "this queue allows {max_per_user} tracks per user: log in to add one"
                            ),
                        )));
                    };
                    let queued = self.added_by_user.get(user).copied().unwrap_or(0);
                    if queued >= *max_per_user {
                        return Ok(Err(CommandError::new(
                            ErrorKind::QueueLimit,
                            format!(
                                "you already have {queued} tracks in the queue, the most this queue allows per user; \
                                 add another once one of them has played or been removed"
                            ),
                        )));
                    }
                }
                let track = QueuedTrack {
                    id: *id,
                    title: title.clone(),
                    artist: artist.clone(),
                    duration: *duration,
                    votes: 0,
                    added_seq: self.counters.next_added,
                    added_by: *by,
                };
                self.counters.next_added += 1;
                if let Some(user) = by {
                    *self.added_by_user.entry(*user).or_default() += 1;
                }
                self.put_track(track.clone(), changes)?;
                self.save_counters(changes)?;
                changes.record(StateChange::Queued(track.clone()));
                Ok(Outcome::Track(track))
            }
            QueueCommand::Add { id, .. } => Err(CommandError::new(
                ErrorKind::Invalid,
                format!("track {id} needs a title, an artist and a duration to be queued"),
            )),
            QueueCommand::Remove { id } => match self.remove_track(*id, changes) {
                Some(_) => {
                    changes.record(StateChange::Unqueued(*id));
                    Ok(Outcome::Done)
                }
                None => Err(not_queued(*id)),
            },
            QueueCommand::Vote { id, up, by } => {
                let Some(track) = self.tracks.get(id).cloned() else {
                    return Ok(Err(not_queued(*id)));
                };
                let change = match by {
                    None => vote_value(Some(*up)),
                    Some(user) => {
                        let before = self.voters.entry(*id).or_default().insert(*user, *up);
                        if before != Some(*up) {
                            changes.put(vote_key(*id, *user), up)?;
                        }
                        vote_value(Some(*up)) - vote_value(before)
                    }
                };
                Ok(Outcome::Track(self.add_votes(track, change, changes)?))
            }
            QueueCommand::Unvote { id, by } => {
                let Some(track) = self.tracks.get(id).cloned() else {
                    return Ok(Err(not_queued(*id)));
                };
                let voters = self.voters.entry(*id).or_default();
                let before = voters.remove(by);
                if voters.is_empty() {
                    self.voters.remove(id);
                }
                if before.is_some() {
                    changes.delete(vote_key(*id, *by));
                }
                Ok(Outcome::Track(self.add_votes(
                    track,
                    -vote_value(before),
                    changes,
                )?))
            }
            QueueCommand::Skip { by, needed } => {
                if self.history.is_empty() {
                    return Ok(Err(CommandError::new(
                        ErrorKind::NothingPlaying,
                        "nothing is playing, so there is nothing to skip",
                    )));
                }
                if self.tracks.is_empty() {
                    return Ok(Err(CommandError::new(
                        ErrorKind::QueueEmpty,
                        "the queue is empty, so nothing could play instead; add a track first",
                    )));
                }
                if self.skippers.insert(*by) {
                    changes.put(numbered_key(SKIP, *by), &())?;
                }
                let votes = self.skip_votes();
                let needed = (*needed).max(1);
                if votes < needed {
                    changes.record(StateChange::SkipVoted { votes, needed });
                    return Ok(Ok(Outcome::Skip {
                        votes,
                        needed,
                        played: None,
                    }));
                }
                self.play_next(at_ms, changes)?.map(|played| Outcome::Skip {
                    votes,
                    needed,
                    played: Some(played),
                })
            }
            QueueCommand::PlayNext => self.play_next(at_ms, changes)?.map(Outcome::Played),
            QueueCommand::Clear => {
                for id in self.tracks.keys() {
                    changes.delete(numbered_key(TRACK, *id));
                }
                for seq in self.history.keys() {
                    changes.delete(numbered_key(HISTORY, *seq));
                }
                for (id, voters) in &self.voters {
                    for user in voters.keys() {
                        changes.delete(vote_key(*id, *user));
                    }
                }
                self.clear_skips(changes);
                self.tracks.clear();
                self.order.clear();
                self.history.clear();
                self.voters.clear();
                self.added_by_user.clear();
                changes.record(StateChange::Cleared);
                Ok(Outcome::Done)
            }
        })
    }

    /// Moves the top of the queue to the end of the history; the skip votes were for the track
    /// that is no longer playing.
    fn play_next(
        &mut self,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<PlayedTrack, CommandError>, CodecError> {
        let top = self.order.first().map(|(_, _, id)| *id);
        let Some(track) = top.and_then(|id| self.remove_track(id, changes)) else {
            return Ok(Err(CommandError::new(
                ErrorKind::QueueEmpty,
                "the queue is empty; add a track first",
            )));
        };
        let played = PlayedTrack {
            track,
            seq: self.counters.next_played,
            played_at_ms: at_ms,
        };
        self.counters.next_played += 1;
        changes.put(numbered_key(HISTORY, played.seq), &played)?;
        self.history.insert(played.seq, played.clone());
        self.save_counters(changes)?;
        self.clear_skips(changes);
        changes.record(StateChange::Played(played.clone()));
        Ok(Ok(played))
    }

    /// Adds `change` to a queued track's votes and returns the track as it is now.
    fn add_votes(
        &mut self,
        mut track: QueuedTrack,
        change: i64,
        changes: &mut Changes,
    ) -> Result<QueuedTrack, CodecError> {
        if change != 0 {
            self.order.remove(&order_key(&track));
            track.votes += change;
            self.put_track(track.clone(), changes)?;
            changes.record(StateChange::Voted(track.clone()));
        }
        Ok(track)
    }

    fn clear_skips(&mut self, changes: &mut Changes) {
        for user in std::mem::take(&mut self.skippers) {
            changes.delete(numbered_key(SKIP, user));
        }
    }

    fn put_track(&mut self, track: QueuedTrack, changes: &mut Changes) -> Result<(), CodecError> {
        changes.put(numbered_key(TRACK, track.id), &track)?;
        self.order.insert(order_key(&track));
        self.tracks.insert(track.id, track);
        Ok(())
    }

    /// Takes a track out of the queue with its votes.
    fn remove_track(&mut self, id: u64, changes: &mut Changes) -> Option<QueuedTrack> {
        let track = self.tracks.remove(&id)?;
        self.order.remove(&order_key(&track));
        changes.delete(numbered_key(TRACK, id));
        for user in self.voters.remove(&id).unwrap_or_default().keys() {
            changes.delete(vote_key(id, *user));
        }
        if let Some(user) = track.added_by
            && let Some(count) = self.added_by_user.get_mut(&user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.added_by_user.remove(&user);
            }
        }
        Some(track)
    }

    /// Takes a deleted upload out of the queue (its history entries stay: they happened).
    pub(crate) fn remove_deleted_track(&mut self, id: u64, changes: &mut Changes) {
        if self.remove_track(id, changes).is_some() {
            changes.record(StateChange::Unqueued(id));
        }
    }

    fn save_counters(&self, changes: &mut Changes) -> Result<(), CodecError> {
        changes.put(COUNTERS.to_vec(), &self.counters)
    }

    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        if key_number(key, TRACK).is_some() {
            let track: QueuedTrack = decode(value)?;
            if let Some(user) = track.added_by {
                *self.added_by_user.entry(user).or_default() += 1;
            }
            self.order.insert(order_key(&track));
            self.tracks.insert(track.id, track);
        } else if let Some(seq) = key_number(key, HISTORY) {
            self.history.insert(seq, decode(value)?);
        } else if key == COUNTERS {
            self.counters = decode(value)?;
        } else if let Some((track, user)) = key.strip_prefix(VOTE).and_then(two_numbers) {
            self.voters
                .entry(track)
                .or_default()
                .insert(user, decode(value)?);
        } else if let Some(user) = key_number(key, SKIP) {
            self.skippers.insert(user);
        }
        Ok(())
    }
}

/// What a vote adds to a track's count.
fn vote_value(vote: Option<bool>) -> i64 {
    match vote {
        Some(true) => 1,
        Some(false) => -1,
        None => 0,
    }
}

fn vote_key(track: u64, user: u64) -> Vec<u8> {
    let mut key = numbered_key(VOTE, track);
    key.extend_from_slice(&user.to_be_bytes());
    key
}

fn two_numbers(rest: &[u8]) -> Option<(u64, u64)> {
    let (a, b) = rest.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(a.try_into().ok()?),
        u64::from_be_bytes(b.try_into().ok()?),
    ))
}

fn not_queued(id: u64) -> CommandError {
    CommandError::new(
        ErrorKind::NotFound,
        format!("track {id} is not in the queue"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(q: &mut QueueState, cmd: QueueCommand) -> Result<Outcome, CommandError> {
        q.apply(&cmd, 0, &mut Changes::default()).expect("encode")
    }

    fn add_by(
        q: &mut QueueState,
        id: u64,
        by: Option<u64>,
        max_per_user: u32,
    ) -> Result<Outcome, CommandError> {
        apply(
            q,
            QueueCommand::Add {
                id,
                title: Some(format!("t{id}")),
                artist: Some("a".into()),
                duration: Some(60),
                by,
                max_per_user,
            },
        )
    }

    fn add(q: &mut QueueState, id: u64) {
        add_by(q, id, None, 0).expect("added");
    }

    fn vote(q: &mut QueueState, id: u64, up: bool, by: Option<u64>) -> i64 {
        match apply(q, QueueCommand::Vote { id, up, by }) {
            Ok(Outcome::Track(t)) => t.votes,
            other => panic!("vote answered {other:?}"),
        }
    }

    fn ids(q: &QueueState) -> Vec<u64> {
        q.queue().iter().map(|t| t.id).collect()
    }

    fn kind(r: Result<Outcome, CommandError>) -> ErrorKind {
        r.expect_err("rejected").kind
    }

    /// The state as another node (or this one after a restart) loads it from the writes.
    fn reloaded(q: &mut QueueState, cmds: Vec<QueueCommand>) -> QueueState {
        let mut changes = Changes::default();
        for cmd in cmds {
            q.apply(&cmd, 0, &mut changes).expect("encode").ok();
        }
        let mut copy = QueueState::default();
        for (key, value) in changes.into_writes() {
            if let Some(value) = value {
                copy.load(&key, &value).expect("decode");
            }
        }
        copy
    }

    #[test]
    fn order_is_votes_then_insertion() {
        let mut q = QueueState::default();
        for id in [5, 3, 9] {
            add(&mut q, id);
        }
        vote(&mut q, 9, true, None);
        assert_eq!(ids(&q), [9, 5, 3]);
        vote(&mut q, 5, false, None);
        assert_eq!(ids(&q), [9, 3, 5]);
        assert_eq!(q.page(1, 1).iter().map(|t| t.id).collect::<Vec<_>>(), [3]);
        assert!(q.page(3, 10).is_empty());
    }

    #[test]
    fn a_user_has_one_vote_per_track_and_can_take_it_back() {
        let mut q = QueueState::default();
        add(&mut q, 1);
        add(&mut q, 2);
        assert_eq!(vote(&mut q, 2, true, Some(7)), 1);
        assert_eq!(
            vote(&mut q, 2, true, Some(7)),
            1,
            "the same vote again changes nothing"
        );
        assert_eq!(vote(&mut q, 2, true, Some(8)), 2);
        assert_eq!(
            vote(&mut q, 2, false, Some(7)),
            0,
            "the other way replaces the vote"
        );
        assert_eq!(q.vote_of(2, 7), Some(false));
        assert_eq!(
            vote(&mut q, 2, true, None),
            1,
            "anonymous votes count each time"
        );
        assert_eq!(vote(&mut q, 2, true, None), 2);
        let back = apply(&mut q, QueueCommand::Unvote { id: 2, by: 7 });
        assert!(matches!(back, Ok(Outcome::Track(ref t)) if t.votes == 3));
        let again = apply(&mut q, QueueCommand::Unvote { id: 2, by: 7 });
        assert!(
            matches!(again, Ok(Outcome::Track(ref t)) if t.votes == 3),
            "nothing to take back"
        );
        assert_eq!(q.vote_of(2, 7), None);
        assert_eq!(
            kind(apply(&mut q, QueueCommand::Unvote { id: 9, by: 7 })),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn votes_and_skips_survive_a_reload_and_leave_with_their_track() {
        let mut q = QueueState::default();
        let copy = reloaded(
            &mut q,
            vec![
                QueueCommand::Add {
                    id: 1,
                    title: Some("a".into()),
                    artist: Some("b".into()),
                    duration: Some(1),
                    by: Some(4),
                    max_per_user: 0,
                },
                QueueCommand::Add {
                    id: 2,
                    title: Some("a".into()),
                    artist: Some("b".into()),
                    duration: Some(1),
                    by: None,
                    max_per_user: 0,
                },
                QueueCommand::Vote {
                    id: 2,
                    up: true,
                    by: Some(7),
                },
                QueueCommand::PlayNext,
                QueueCommand::Add {
                    id: 3,
                    title: Some("a".into()),
                    artist: Some("b".into()),
                    duration: Some(1),
                    by: Some(4),
                    max_per_user: 0,
                },
                QueueCommand::Vote {
                    id: 1,
                    up: false,
                    by: Some(7),
                },
                QueueCommand::Skip { by: 9, needed: 2 },
            ],
        );
        assert_eq!(copy.vote_of(1, 7), Some(false));
        assert_eq!(
            copy.vote_of(2, 7),
            None,
            "track 2 played: its votes went with it"
        );
        assert_eq!(copy.skip_votes(), 1);
        assert_eq!(copy.track(1).and_then(|t| t.added_by), Some(4));
        assert_eq!(copy.added_by_user.get(&4), Some(&2));
        assert_eq!(ids(&copy), ids(&q));
    }

    #[test]
    fn a_user_may_queue_at_most_max_per_user_tracks() {
        let mut q = QueueState::default();
        add_by(&mut q, 1, Some(4), 2).expect("first");
        add_by(&mut q, 2, Some(4), 2).expect("second");
        assert_eq!(kind(add_by(&mut q, 3, Some(4), 2)), ErrorKind::QueueLimit);
        add_by(&mut q, 3, Some(5), 2).expect("another user");
        assert_eq!(kind(add_by(&mut q, 4, None, 2)), ErrorKind::SignInRequired);
        add_by(&mut q, 4, None, 0).expect("no limit: anonymous is fine");
        apply(&mut q, QueueCommand::PlayNext).expect("played track 1");
        add_by(&mut q, 5, Some(4), 2).expect("room again once one has played");
    }

    #[test]
    fn enough_skip_votes_play_the_next_track_once() {
        let mut q = QueueState::default();
        assert_eq!(
            kind(apply(&mut q, QueueCommand::Skip { by: 1, needed: 2 })),
            ErrorKind::NothingPlaying
        );
        for id in [1, 2, 3] {
            add(&mut q, id);
        }
        apply(&mut q, QueueCommand::PlayNext).expect("track 1 plays");
        let first = apply(&mut q, QueueCommand::Skip { by: 1, needed: 2 });
        assert!(matches!(
            first,
            Ok(Outcome::Skip {
                votes: 1,
                needed: 2,
                played: None
            })
        ));
        let same_user = apply(&mut q, QueueCommand::Skip { by: 1, needed: 2 });
        assert!(matches!(
            same_user,
            Ok(Outcome::Skip {
                votes: 1,
                played: None,
                ..
            })
        ));
        let second = apply(&mut q, QueueCommand::Skip { by: 2, needed: 2 });
        assert!(
            matches!(second, Ok(Outcome::Skip { votes: 2, played: Some(ref p), .. }) if p.track.id == 2)
        );
        let late = apply(&mut q, QueueCommand::Skip { by: 3, needed: 2 });
        assert!(
            matches!(
                late,
                Ok(Outcome::Skip {
                    votes: 1,
                    played: None,
                    ..
                })
            ),
            "a late skip vote counts against the new track, it does not skip twice"
        );
        let history: Vec<u64> = q.history().iter().map(|p| p.track.id).collect();
        assert_eq!(history, [1, 2]);
        apply(&mut q, QueueCommand::PlayNext).expect("track 3 plays");
        assert_eq!(
            kind(apply(&mut q, QueueCommand::Skip { by: 1, needed: 1 })),
            ErrorKind::QueueEmpty
        );
    }

    #[test]
    fn play_next_moves_top_to_history_once() {
        let mut q = QueueState::default();
        add(&mut q, 1);
        add(&mut q, 2);
        let played = q
            .apply(&QueueCommand::PlayNext, 42, &mut Changes::default())
            .expect("encode");
        assert!(
            matches!(played, Ok(Outcome::Played(ref p)) if p.track.id == 1 && p.played_at_ms == 42)
        );
        apply(&mut q, QueueCommand::PlayNext).expect("played");
        assert_eq!(
            kind(apply(&mut q, QueueCommand::PlayNext)),
            ErrorKind::QueueEmpty
        );
        let ids: Vec<u64> = q.history().iter().map(|p| p.track.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn duplicate_add_and_unknown_ids_are_rejected() {
        let mut q = QueueState::default();
        add(&mut q, 1);
        assert_eq!(kind(add_by(&mut q, 1, None, 0)), ErrorKind::AlreadyQueued);
        assert_eq!(
            kind(apply(&mut q, QueueCommand::Remove { id: 7 })),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(apply(
                &mut q,
                QueueCommand::Vote {
                    id: 7,
                    up: true,
                    by: Some(1)
                }
            )),
            ErrorKind::NotFound
        );
    }
}
