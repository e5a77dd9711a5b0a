//! Users (seed 000) and the cluster-wide JWT signing key.
//!
//! Usernames and emails are unique without regard to case. Uniqueness is decided here, in
//! `apply`, so two nodes registering the same name at the same moment cannot both succeed:
//! the first entry in the log wins and the second gets `UsernameTaken`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Changes, decode, key_number, numbered_key};
use crate::codec::CodecError;
use crate::command::{CommandError, ErrorKind, Outcome};

pub const PREFIX: &[u8] = b"u/";
const USER: &[u8] = b"u/u/";
const NEXT_ID: &[u8] = b"u/next";
const SIGNING_KEY: &[u8] = b"u/signing_key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

#[derive(Debug, Default)]
pub struct UsersState {
    users: BTreeMap<u64, User>,
    by_username: HashMap<String, u64>,
    by_email: HashMap<String, u64>,
    next_id: u64,
    signing_key: Option<Vec<u8>>,
}

impl UsersState {
    pub fn get(&self, id: u64) -> Option<&User> {
        self.users.get(&id)
    }

    pub fn by_username(&self, username: &str) -> Option<&User> {
        self.by_username
            .get(&username.to_lowercase())
            .and_then(|id| self.users.get(id))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn signing_key(&self) -> Option<&[u8]> {
        self.signing_key.as_deref()
    }

    pub(crate) fn register(
        &mut self,
        username: &str,
        email: &str,
        password_hash: &str,
        at_ms: u64,
        changes: &mut Changes,
    ) -> Result<Result<Outcome, CommandError>, CodecError> {
        let (name_key, email_key) = (username.to_lowercase(), email.to_lowercase());
        if self.by_username.contains_key(&name_key) {
            return Ok(Err(CommandError::new(
                ErrorKind::UsernameTaken,
                format!("the username `{username}` is taken; choose another"),
            )));
        }
        if self.by_email.contains_key(&email_key) {
            return Ok(Err(CommandError::new(
                ErrorKind::EmailTaken,
                format!("the email `{email}` already belongs to a user; log in instead"),
            )));
        }
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        let user = User {
            id,
            username: username.to_string(),
            email: email.to_string(),
            password_hash: password_hash.to_string(),
            created_at_ms: at_ms,
        };
        changes.put(numbered_key(USER, id), &user)?;
        changes.put(NEXT_ID.to_vec(), &self.next_id)?;
        self.index(user);
        Ok(Ok(Outcome::Id(id)))
    }

    /// Removes the user (the caller removes their playlist).
    pub(crate) fn delete(
        &mut self,
        user_id: u64,
        by: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, CommandError> {
        if !self.users.contains_key(&user_id) {
            return Err(no_user(user_id));
        }
        if by != user_id {
            return Err(CommandError::new(
                ErrorKind::Forbidden,
                "you can only delete your own account",
            ));
        }
        if let Some(user) = self.users.remove(&user_id) {
            self.by_username.remove(&user.username.to_lowercase());
            self.by_email.remove(&user.email.to_lowercase());
        }
        changes.delete(numbered_key(USER, user_id));
        Ok(Outcome::Done)
    }

    pub(crate) fn init_signing_key(
        &mut self,
        key: &[u8],
        changes: &mut Changes,
    ) -> Result<Outcome, CodecError> {
        if self.signing_key.is_none() {
            changes.put(SIGNING_KEY.to_vec(), &key.to_vec())?;
            self.signing_key = Some(key.to_vec());
        }
        Ok(Outcome::Done)
    }

    fn index(&mut self, user: User) {
        self.by_username
            .insert(user.username.to_lowercase(), user.id);
        self.by_email.insert(user.email.to_lowercase(), user.id);
        self.users.insert(user.id, user);
    }

    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        if key_number(key, USER).is_some() {
            self.index(decode(value)?);
        } else if key == NEXT_ID {
            self.next_id = decode(value)?;
        } else if key == SIGNING_KEY {
            self.signing_key = Some(decode(value)?);
        }
        Ok(())
    }
}

pub(crate) fn no_user(id: u64) -> CommandError {
    CommandError::new(ErrorKind::NotFound, format!("user {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_emails_are_unique_regardless_of_case() {
        let mut users = UsersState::default();
        let mut changes = Changes::default();
        let first = users
            .register("Alice", "a@example.com", "h", 1, &mut changes)
            .expect("encode");
        assert_eq!(first, Ok(Outcome::Id(1)));
        let again = users
            .register("alice", "other@example.com", "h", 2, &mut changes)
            .expect("encode");
        assert!(matches!(
            again,
            Err(CommandError {
                kind: ErrorKind::UsernameTaken,
                ..
            })
        ));
        let email = users
            .register("bob", "A@EXAMPLE.com", "h", 3, &mut changes)
            .expect("encode");
        assert!(matches!(
            email,
            Err(CommandError {
                kind: ErrorKind::EmailTaken,
                ..
            })
        ));
        assert_eq!(users.by_username("ALICE").map(|u| u.id), Some(1));
    }

    #[test]
    fn only_the_user_deletes_themself_and_the_name_becomes_free() {
        let mut users = UsersState::default();
        let mut changes = Changes::default();
        users
            .register("alice", "a@example.com", "h", 1, &mut changes)
            .expect("encode")
            .expect("registered");
        assert!(matches!(
            users.delete(1, 2, &mut changes),
            Err(CommandError {
                kind: ErrorKind::Forbidden,
                ..
            })
        ));
        users.delete(1, 1, &mut changes).expect("deleted");
        let reused = users
            .register("alice", "a@example.com", "h", 2, &mut changes)
            .expect("encode");
        assert_eq!(reused, Ok(Outcome::Id(2)), "ids are never reused");
    }

    #[test]
    fn the_first_signing_key_wins() {
        let mut users = UsersState::default();
        let mut changes = Changes::default();
        users
            .init_signing_key(b"first", &mut changes)
            .expect("encode");
        users
            .init_signing_key(b"second", &mut changes)
            .expect("encode");
        assert_eq!(users.signing_key(), Some(&b"first"[..]));
    }
}
