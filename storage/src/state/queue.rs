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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedTrack {
    pub id: u64,
    pub title: String,
    pub artist: String,
    /// Seconds.
    pub duration: u32,
    pub votes: i64,
    /// Position in the order of additions; breaks ties between equal votes.
    pub added_seq: u64,
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
}

impl QueueState {
    /// The queue, most votes first.
    pub fn queue(&self) -> Vec<QueuedTrack> {
        self.order
            .iter()
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

    /// The history, oldest first.
    pub fn history(&self) -> Vec<PlayedTrack> {
        self.history.values().cloned().collect()
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
            } => {
                if self.tracks.contains_key(id) {
                    Err(CommandError::new(
                        ErrorKind::AlreadyQueued,
                        format!("track {id} is already in the queue; vote for it instead"),
                    ))
                } else {
                    let track = QueuedTrack {
                        id: *id,
                        title: title.clone(),
                        artist: artist.clone(),
                        duration: *duration,
                        votes: 0,
                        added_seq: self.counters.next_added,
                    };
                    self.counters.next_added += 1;
                    self.put_track(track.clone(), changes)?;
                    self.save_counters(changes)?;
                    changes.record(StateChange::Queued(track.clone()));
                    Ok(Outcome::Track(track))
                }
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
            QueueCommand::Vote { id, up } => match self.tracks.get(id).cloned() {
                Some(mut track) => {
                    self.order.remove(&order_key(&track));
                    track.votes += if *up { 1 } else { -1 };
                    self.put_track(track.clone(), changes)?;
                    changes.record(StateChange::Voted(track.clone()));
                    Ok(Outcome::Track(track))
                }
                None => Err(not_queued(*id)),
            },
            QueueCommand::PlayNext => {
                let top = self.order.first().map(|(_, _, id)| *id);
                match top.and_then(|id| self.remove_track(id, changes)) {
                    Some(track) => {
                        let played = PlayedTrack {
                            track,
                            seq: self.counters.next_played,
                            played_at_ms: at_ms,
                        };
                        self.counters.next_played += 1;
                        changes.put(numbered_key(HISTORY, played.seq), &played)?;
                        self.history.insert(played.seq, played.clone());
                        self.save_counters(changes)?;
                        changes.record(StateChange::Played(played.clone()));
                        Ok(Outcome::Played(played))
                    }
                    None => Err(CommandError::new(
                        ErrorKind::QueueEmpty,
                        "the queue is empty; add a track first",
                    )),
                }
            }
            QueueCommand::Clear => {
                for id in self.tracks.keys() {
                    changes.delete(numbered_key(TRACK, *id));
                }
                for seq in self.history.keys() {
                    changes.delete(numbered_key(HISTORY, *seq));
                }
                self.tracks.clear();
                self.order.clear();
                self.history.clear();
                changes.record(StateChange::Cleared);
                Ok(Outcome::Done)
            }
        })
    }

    fn put_track(&mut self, track: QueuedTrack, changes: &mut Changes) -> Result<(), CodecError> {
        changes.put(numbered_key(TRACK, track.id), &track)?;
        self.order.insert(order_key(&track));
        self.tracks.insert(track.id, track);
        Ok(())
    }

    fn remove_track(&mut self, id: u64, changes: &mut Changes) -> Option<QueuedTrack> {
        let track = self.tracks.remove(&id)?;
        self.order.remove(&order_key(&track));
        changes.delete(numbered_key(TRACK, id));
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
            self.order.insert(order_key(&track));
            self.tracks.insert(track.id, track);
        } else if let Some(seq) = key_number(key, HISTORY) {
            self.history.insert(seq, decode(value)?);
        } else if key == COUNTERS {
            self.counters = decode(value)?;
        }
        Ok(())
    }
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

    fn add(q: &mut QueueState, id: u64) {
        let cmd = QueueCommand::Add {
            id,
            title: Some(format!("t{id}")),
            artist: Some("a".into()),
            duration: Some(60),
        };
        q.apply(&cmd, 0, &mut Changes::default())
            .expect("encode")
            .expect("added");
    }

    #[test]
    fn order_is_votes_then_insertion() {
        let mut q = QueueState::default();
        for id in [5, 3, 9] {
            add(&mut q, id);
        }
        let vote = QueueCommand::Vote { id: 9, up: true };
        q.apply(&vote, 0, &mut Changes::default())
            .expect("encode")
            .expect("voted");
        let ids: Vec<u64> = q.queue().iter().map(|t| t.id).collect();
        assert_eq!(ids, [9, 5, 3]);
        let down = QueueCommand::Vote { id: 5, up: false };
        q.apply(&down, 0, &mut Changes::default())
            .expect("encode")
            .expect("voted");
        let ids: Vec<u64> = q.queue().iter().map(|t| t.id).collect();
        assert_eq!(ids, [9, 3, 5]);
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
        q.apply(&QueueCommand::PlayNext, 43, &mut Changes::default())
            .expect("encode")
            .expect("played");
        let empty = q
            .apply(&QueueCommand::PlayNext, 44, &mut Changes::default())
            .expect("encode");
        assert!(matches!(
            empty,
            Err(CommandError {
                kind: ErrorKind::QueueEmpty,
                ..
            })
        ));
        let ids: Vec<u64> = q.history().iter().map(|p| p.track.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn duplicate_add_and_unknown_ids_are_rejected() {
        let mut q = QueueState::default();
        add(&mut q, 1);
        let again = QueueCommand::Add {
            id: 1,
            title: Some("x".into()),
            artist: Some("y".into()),
            duration: Some(1),
        };
        let r = q.apply(&again, 0, &mut Changes::default()).expect("encode");
        assert!(matches!(
            r,
            Err(CommandError {
                kind: ErrorKind::AlreadyQueued,
                ..
            })
        ));
        let r = q
            .apply(&QueueCommand::Remove { id: 7 }, 0, &mut Changes::default())
            .expect("encode");
        assert!(matches!(
            r,
            Err(CommandError {
                kind: ErrorKind::NotFound,
                ..
            })
        ));
    }
}
