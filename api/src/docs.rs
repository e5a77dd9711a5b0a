//! The OpenAPI document, generated from the handlers' annotations, and Swagger UI at `/docs`
//! (its assets are compiled into the binary: no CDN).

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};

use crate::{cluster, error, queue};

#[derive(OpenApi)]
#[openapi(
    info(title = "chorus", description = "A replicated music service: any node serves the whole API."),
    paths(
        queue::add_track, queue::remove_track, queue::vote, queue::queue, queue::metadata,
        queue::history, queue::play_next, queue::clear,
        cluster::health, cluster::ready, cluster::cluster, cluster::add_member, cluster::remove_member,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&AdminToken),
    tags((name = "queue", description = "The collaborative voting queue"),
         (name = "cluster", description = "Health, discovery and membership")),
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Admin-Token"))),
        );
    }
}
