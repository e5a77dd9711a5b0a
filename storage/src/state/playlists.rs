//! Playlists: one per user, tracks in the order they were added, each at most once.

use std::collections::BTreeMap;

use super::{Changes, decode, key_number, numbered_key};
use crate::codec::CodecError;
use crate::command::{CommandError, ErrorKind, Outcome};

pub const PREFIX: &[u8] = b"p/";

#[derive(Debug, Default)]
pub struct PlaylistsState {
    by_user: BTreeMap<u64, Vec<u64>>,
}

impl PlaylistsState {
    /// The user's track ids in insertion order (empty when they never added one).
    pub fn of(&self, user_id: u64) -> &[u64] {
        self.by_user.get(&user_id).map_or(&[], Vec::as_slice)
    }

    /// Adds `track_id`; adding a track that is already there changes nothing.
    pub(crate) fn add(
        &mut self,
        user_id: u64,
        track_id: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, CodecError> {
        let list = self.by_user.entry(user_id).or_default();
        if !list.contains(&track_id) {
            list.push(track_id);
            changes.put(numbered_key(PREFIX, user_id), list)?;
        }
        Ok(Outcome::Done)
    }

    pub(crate) fn remove(
        &mut self,
        user_id: u64,
        track_id: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let Some(list) = self
            .by_user
            .get_mut(&user_id)
            .filter(|l| l.contains(&track_id))
        else {
            return Ok(Err(CommandError::new(
                ErrorKind::NotFound,
                format!("track {track_id} is not in the playlist of user {user_id}"),
            )));
        };
        list.retain(|t| *t != track_id);
        changes.put(numbered_key(PREFIX, user_id), list)?;
        Ok(Ok(Outcome::Done))
    }

    /// Takes a deleted track out of every playlist.
    pub(crate) fn remove_everywhere(
        &mut self,
        track_id: u64,
        changes: &mut Changes,
    ) -> Result<(), CodecError> {
        for (user_id, list) in &mut self.by_user {
            if list.contains(&track_id) {
                list.retain(|t| *t != track_id);
                changes.put(numbered_key(PREFIX, *user_id), list)?;
            }
        }
        Ok(())
    }

    pub(crate) fn delete_user(&mut self, user_id: u64, changes: &mut Changes) {
        if self.by_user.remove(&user_id).is_some() {
            changes.delete(numbered_key(PREFIX, user_id));
        }
    }

    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        if let Some(user_id) = key_number(key, PREFIX) {
            self.by_user.insert(user_id, decode(value)?);
        }
        Ok(())
    }
}
