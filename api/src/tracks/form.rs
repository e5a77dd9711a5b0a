//! Reading the multipart form of an upload or an edit: the metadata (a JSON part or plain
//! fields), bounded in size, and the `file` part handed to the upload pipeline as it streams.

use axum::extract::multipart::{Field, Multipart};
use axum::http::StatusCode;
use raft::Replica;

use super::upload::{Received, receive_file};
use super::{MAX_FIELD, MAX_PARTS, MAX_TEXT, TrackMetadata};
use crate::ApiSettings;
use crate::audio::NotMp3;
use crate::error::ApiError;

// ---- reading the multipart form ----

pub(super) fn unsupported(e: NotMp3) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        e.0,
    )
}

pub(super) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the file is larger than this cluster's upload limit of {} MiB",
            limit / (1024 * 1024)
        ),
    )
}

pub(super) fn multipart_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "the multipart body is malformed or was cut off: {e}"
    ))
}

/// Metadata fields as sent; `None` = not given.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) title: Option<String>,
    pub(super) artist: Option<String>,
    pub(super) album: Option<String>,
    pub(super) genre: Option<String>,
    pub(super) track_id: Option<String>,
}

impl Fields {
    fn set(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        let value = value.trim().to_string();
        if value.chars().count() > MAX_TEXT {
            return Err(ApiError::bad_request(format!(
                "`{name}` is longer than {MAX_TEXT} characters"
            )));
        }
        let slot = match name {
            "title" => &mut self.title,
            "artist" => &mut self.artist,
            "album" => &mut self.album,
            "genre" => &mut self.genre,
            _ => &mut self.track_id,
        };
        *slot = Some(value);
        Ok(())
    }

    fn merge_json(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        let meta: TrackMetadata = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the `metadata` part must be JSON like {{\"title\": \"…\", \"artist\": \"…\"}}: {e}"
            ))
        })?;
        for (name, value) in [
            ("title", meta.title),
            ("artist", meta.artist),
            ("album", meta.album),
            ("genre", meta.genre),
        ] {
            if let Some(value) = value {
                self.set(name, value)?;
            }
        }
        match meta.track_id {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => self.set("track_id", s)?,
            Some(serde_json::Value::Number(n)) => self.set("track_id", n.to_string())?,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`track_id` must be a number or a string of digits, not {other}"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.artist.is_none()
            && self.album.is_none()
            && self.genre.is_none()
    }
}

/// A small part (metadata, a field), at most `MAX_FIELD` bytes.
pub(super) async fn read_small(field: &mut Field<'_>, name: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(piece) = field.chunk().await.map_err(multipart_error)? {
        if out.len() + piece.len() > MAX_FIELD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the `{name}` part is over {} KiB", MAX_FIELD / 1024),
            ));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Reads the whole form: metadata parts or fields, and the file (streamed into chunks).
pub(super) async fn read_form(
    r: &Replica,
    by: u64,
    mut form: Multipart,
    settings: &ApiSettings,
) -> Result<(Fields, Option<Received>), ApiError> {
    let (limit, push) = (settings.max_upload_bytes, settings.push_chunks);
    let mut fields = Fields::default();
    let mut file = None;
    let mut parts = 0;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::bad_request(format!(
                "too many form parts (at most {MAX_PARTS})"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "metadata" | "request" => fields.merge_json(&read_small(&mut field, &name).await?)?,
            "title" | "artist" | "album" | "genre" | "track_id" => {
                let bytes = read_small(&mut field, &name).await?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| ApiError::bad_request(format!("`{name}` is not UTF-8 text")))?;
                fields.set(&name, text)?;
            }
            "file" if file.is_some() => {
                return Err(ApiError::bad_request("send one `file` part, not several"));
            }
            "file" => file = Some(receive_file(r, by, &mut field, limit, push).await?),
            other => {
                tracing::debug!(part = other, "ignoring an unknown form part");
                read_small(&mut field, other).await.map(drop).ok();
            }
        }
    }
    Ok((fields, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any `metadata` part is taken or refused with a 400, never a panic; what is taken
        /// keeps to the length limit.
        #[test]
        fn any_metadata_part_is_taken_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut fields = Fields::default();
            if let Err(e) = fields.merge_json(&bytes) {
                proptest::prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            }
            for value in [&fields.title, &fields.artist, &fields.album, &fields.genre].into_iter().flatten() {
                proptest::prop_assert!(value.chars().count() <= MAX_TEXT);
            }
        }

        /// The same for JSON objects with arbitrary field values.
        #[test]
        fn any_metadata_object_is_taken_or_refused(title in ".{0,300}", track_id in proptest::prelude::any::<i64>()) {
            let json = serde_json::json!({"title": title, "track_id": track_id}).to_string();
            let mut fields = Fields::default();
            if let Err(e) = fields.merge_json(json.as_bytes()) {
                proptest::prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            }
        }
    }
}
