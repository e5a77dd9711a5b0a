//! The OpenAPI document, generated from the handlers' annotations, and Swagger UI at `/docs`
//! (its assets are compiled into the binary: no CDN).

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{backup, cluster, error, events, playback, playlists, queue, tracks, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "chorus", description = "A replicated music service: any node serves the whole API."),
    paths(
        users::register, users::login, users::get_user, users::delete_user,
        tracks::upload_track, tracks::list_tracks, tracks::get_track, tracks::update_track,
        tracks::update_track_from_form, tracks::delete_track,
        playback::play, playback::file,
        playlists::add, playlists::remove, playlists::playlist,
        queue::add_track, queue::remove_track, queue::vote, queue::unvote, queue::skip,
        queue::queue, queue::metadata,
        queue::history, queue::play_next, queue::clear, events::events,
        cluster::health, cluster::ready, cluster::cluster, cluster::add_member, cluster::remove_member,
        cluster::verify_chunks, crate::tracks::push::receive_pushed_chunk, backup::backup,
    ),
    components(schemas(error::ErrorBody, crate::extract::Consistency)),
    modifiers(&SecuritySchemes, &CommonErrors),
    tags((name = "users", description = "Accounts and login (JWT bearer tokens)"),
         (name = "tracks", description = "Uploading, listing, editing and deleting MP3 tracks"),
         (name = "playback", description = "Streaming audio with HTTP range support"),
         (name = "playlists", description = "One playlist per user"),
         (name = "queue", description = "The collaborative voting queue"),
         (name = "cluster", description = "Health, discovery, membership and backups")),
)]
pub struct ApiDoc;

/// `bearer`: the JWT from `POST /users/login`; `admin_token`: the cluster admin token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Admin-Token"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The token from POST /users/login"))
                    .build(),
            ),
        );
    }
}

/// The error answers every operation can give besides its own, documented on each so that
/// the document lists every status a client can see: 401 where a token is taken, 400 (a
/// malformed parameter or header), for
/// a JSON body 413/415/422 (too large, not JSON, the wrong shape), and 503 (no leader, a
/// lagging node, `overloaded`) everywhere but the liveness probe. Each is an [`ErrorBody`].
///
/// [`ErrorBody`]: crate::error::ErrorBody
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                let takes_input = json_body
                    || op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                };
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add(
                        "401",
                        "The token is missing, expired or wrong (or the admin token is)",
                    );
                }
                if takes_input {
                    add(
                        "400",
                        "A parameter, header or body is malformed; the message says which",
                    );
                }
                if json_body {
                    add("413", "The body is larger than 1 MiB");
                    add("415", "The body is not `application/json`");
                    add("422", "The JSON does not have the documented shape");
                }
                if path != "/health" {
                    add(
                        "503",
                        "The cluster cannot answer now (no leader, a lagging node, or `overloaded`); retry after `Retry-After`",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `value`, recursively.
    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_string()),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_is_defined_and_each_shape_has_its_own_name() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        let schemas = &doc["components"]["schemas"];
        for r in &found {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                schemas[name].is_object(),
                "{r} is referenced but not defined"
            );
        }
        // The library's track and the queue's track are different shapes.
        let listed = &doc["paths"]["/tracks"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["items"]["$ref"];
        let name = listed
            .as_str()
            .expect("a reference")
            .trim_start_matches("#/components/schemas/");
        assert!(
            schemas[name]["properties"]["track_id"].is_object(),
            "/tracks is documented as {name}"
        );
        let queued = &doc["paths"]["/queue"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["items"]["$ref"];
        let name = queued
            .as_str()
            .expect("a reference")
            .trim_start_matches("#/components/schemas/");
        assert!(
            schemas[name]["properties"]["votes"].is_object(),
            "/queue is documented as {name}"
        );
    }
}
