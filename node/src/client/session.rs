//! The login kept between `chorus client` commands: the node, the token and who it is for, in
//! `<config dir>/chorus/session.json` (`$XDG_CONFIG_HOME` or `~/.config` on Linux), readable by
//! the user only. The token is never printed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Base URL of the node that issued the token.
    pub node: String,
    pub username: String,
    pub user_id: u64,
    pub token: String,
}

fn path() -> anyhow::Result<PathBuf> {
    let dir = dirs::config_dir()
        .context("no config directory for this user (set XDG_CONFIG_HOME or HOME)")?;
    Ok(dir.join("chorus").join("session.json"))
}

impl Session {
    /// The stored login, if any.
    pub fn load() -> anyhow::Result<Option<Self>> {
        let path = path()?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is damaged: run `chorus client logout`, then log in again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The stored login, or an error that says how to make one.
    pub fn required() -> anyhow::Result<Self> {
        match Self::load()? {
            Some(session) => Ok(session),
            None => bail!("not logged in: run `chorus client login --username <name>` first"),
        }
    }

    /// Stores this login, replacing any other: written to a temporary file created with mode
    /// 0600 and renamed, so the token is never readable by others, not even for a moment.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path()?;
        let dir = path.parent().context("the session path has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join("session.json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Forgets the stored login; true if there was one.
    pub fn remove() -> anyhow::Result<bool> {
        let path = path()?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

/// The user id a chorus token is for (its `sub` claim). Read without checking the signature:
/// the node checks it on every request; this only names the user for the playlist's path.
pub fn token_user_id(token: &str) -> anyhow::Result<u64> {
    use base64::Engine;
    let payload = token
        .split('.')
        .nth(1)
        .context("the node's token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("the node's token is not a JWT")?;
    #[derive(Deserialize)]
    struct Claims {
        sub: String,
    }
    let claims: Claims = serde_json::from_slice(&bytes).context("the node's token has no `sub`")?;
    claims
        .sub
        .parse()
        .context("the node's token names no numeric user")
}
