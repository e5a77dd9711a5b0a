//! The seed's gRPC queue service (`queue.QueueService`, `proto/queue.proto`) on every node's
//! `grpc_addr`, with the standard `grpc.health.v1.Health` (serving = `/ready`) and server
//! reflection beside it.
//!
//! It is another front door to the same [`QueueActor`](crate::queue::QueueActor) as REST, so it
//! has the same guarantees: writes go to the leader and are answered once committed, reads are
//! linearizable unless the `consistency: stale` metadata asks otherwise, `idempotency-key`
//! metadata makes a retry apply once, and `authorization: Bearer <token>` makes a vote the
//! caller's one vote. Errors carry the REST message with the nearest gRPC code.
//!
//! Votes answer with the voted track only, not the queue (the seed's clients look for the
//! track in `queue`, so they still work); `AddTrack` and `RemoveTrack` answer with the whole
//! queue, as the seed does, unless the `prefer: return=minimal` metadata asks for the track
//! only.

use std::time::Duration;

use axum::http::StatusCode;
use storage::{Outcome, PlayedTrack, QueueCommand, QueuedTrack};
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::error::ApiError;
use crate::extract::{Consistency, anonymous_idempotency_key};
use crate::queue::{QueueMsg, Written, check_text, parse_id};
use crate::{AppState, ask, unexpected};

/// Code generated from `proto/queue.proto` by `build.rs`.
pub mod pb {
    tonic::include_proto!("queue");

    /// The encoded descriptors of `queue.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/queue_descriptor.bin"));
}

use pb::queue_service_server::{QueueService, QueueServiceServer};

/// How often the health service looks at this node's readiness.
const HEALTH_POLL: Duration = Duration::from_millis(500);

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match (e.status, e.code) {
            (_, "already_queued") => Code::AlreadyExists,
            (StatusCode::BAD_REQUEST, "queue_empty") => Code::FailedPrecondition,
            (StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY, _) => {
                Code::InvalidArgument
            }
            (StatusCode::UNAUTHORIZED, _) => Code::Unauthenticated,
            (StatusCode::FORBIDDEN, _) => Code::PermissionDenied,
            (StatusCode::NOT_FOUND, _) => Code::NotFound,
            (StatusCode::CONFLICT, "queue_limit") => Code::ResourceExhausted,
            (StatusCode::CONFLICT, _) => Code::FailedPrecondition,
            (StatusCode::SERVICE_UNAVAILABLE, _) => Code::Unavailable,
            _ => Code::Internal,
        };
        crate::metrics::grpc_error(code);
        let mut status = Status::new(code, e.message);
        // The REST error code, for clients that want the finer reason.
        if let Ok(value) = e.code.parse() {
            status.metadata_mut().insert("chorus-error", value);
        }
        status
    }
}

/// What a call's metadata asks for.
struct CallOptions {
    user: Option<u64>,
    key: Option<String>,
    consistency: Consistency,
    minimal: bool,
}

fn text<'a>(metadata: &'a MetadataMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match metadata.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.trim()))
            .map_err(|_| ApiError::bad_request(format!("the `{name}` metadata is not ASCII"))),
    }
}

impl CallOptions {
    /// Reads the call's options from `request`'s metadata (and counts the call).
    async fn read<T>(app: &AppState, request: &Request<T>) -> Result<Self, ApiError> {
        if let Some(method) = request.extensions().get::<tonic::GrpcMethod>() {
            crate::metrics::grpc_call(method.method());
        }
        let metadata = request.metadata();
        let user = match text(metadata, "authorization")? {
            None => None,
            Some(value) => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        ApiError::unauthorized(
                            "the authorization metadata must be `Bearer <token>` (from POST /users/login)",
                        )
                    })?;
                Some(crate::auth::verify(app, token.trim()).await?)
            }
        };
        let key = text(metadata, "idempotency-key")?
            .map(anonymous_idempotency_key)
            .transpose()?
            .map(|key| match user {
                Some(user) => crate::extract::IdempotencyKey(Some(key))
                    .for_user(user)
                    .unwrap_or_default(),
                None => key,
            });
        let consistency = match text(metadata, "consistency")? {
            None | Some("linearizable") => Consistency::Linearizable,
            Some("stale") => Consistency::Stale,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown consistency `{other}`: use `linearizable` (default) or `stale`"
                )));
            }
        };
        let minimal =
            text(metadata, "prefer")?.is_some_and(|p| p.eq_ignore_ascii_case("return=minimal"));
        Ok(Self {
            user,
            key,
            consistency,
            minimal,
        })
    }
}

fn track_message(t: &QueuedTrack) -> pb::Track {
    pb::Track {
        id: t.id.to_string(),
        title: t.title.clone(),
        artist: t.artist.clone(),
        votes: i32::try_from(t.votes).unwrap_or(if t.votes < 0 { i32::MIN } else { i32::MAX }),
        duration: i32::try_from(t.duration).unwrap_or(i32::MAX),
    }
}

fn played_message(p: &PlayedTrack) -> pb::Track {
    track_message(&p.track)
}

fn track_list(tracks: &[QueuedTrack]) -> Vec<pb::Track> {
    tracks.iter().map(track_message).collect()
}

/// `queue.QueueService` over this node's queue actor.
#[derive(Clone)]
pub struct QueueGrpc {
    app: AppState,
}

impl QueueGrpc {
    async fn write(
        &self,
        cmd: QueueCommand,
        options: &CallOptions,
        with_queue: bool,
    ) -> Result<Written, ApiError> {
        ask(&self.app.queue, |reply| QueueMsg::Write {
            cmd,
            key: options.key.clone(),
            with_queue,
            reply,
        })
        .await
    }

    /// The answer to an add or a remove: the queue after it, or only `track` when asked to.
    fn queue_response(
        message: &str,
        queue: Option<Vec<QueuedTrack>>,
        track: Option<QueuedTrack>,
    ) -> pb::QueueResponse {
        pb::QueueResponse {
            message: message.to_string(),
            queue: match queue {
                Some(queue) => track_list(&queue),
                None => track.iter().map(track_message).collect(),
            },
        }
    }
}

#[tonic::async_trait]
impl QueueService for QueueGrpc {
    async fn add_track(
        &self,
        request: Request<pb::Track>,
    ) -> Result<Response<pb::QueueResponse>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let track = request.into_inner();
        let id = parse_id(&track.id)?;
        // proto3 cannot tell an empty string from a missing one: empty means "not given", and an
        // uploaded track's own metadata is then used.
        let given = |field: &str, value: String| -> Result<Option<String>, ApiError> {
            if value.is_empty() {
                return Ok(None);
            }
            check_text(field, &value)?;
            Ok(Some(value))
        };
        let duration = u32::try_from(track.duration).map_err(|_| {
            ApiError::bad_request(format!(
                "duration {} is negative; give it in seconds",
                track.duration
            ))
        })?;
        let cmd = QueueCommand::Add {
            id,
            title: given("title", track.title)?,
            artist: given("artist", track.artist)?,
            // The seed's own tests queue tracks without a duration: 0 is a duration.
            duration: Some(duration),
            by: options.user,
            max_per_user: self.app.settings.max_tracks_per_user,
        };
        let (outcome, queue) = self.write(cmd, &options, !options.minimal).await?;
        let added = match outcome {
            Outcome::Track(track) => track,
            other => return Err(unexpected(other).into()),
        };
        Ok(Response::new(Self::queue_response(
            "Track added",
            queue,
            Some(added),
        )))
    }

    async fn remove_track(
        &self,
        request: Request<pb::TrackId>,
    ) -> Result<Response<pb::QueueResponse>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let id = parse_id(&request.get_ref().id)?;
        let (_, queue) = self
            .write(QueueCommand::Remove { id }, &options, !options.minimal)
            .await?;
        Ok(Response::new(Self::queue_response(
            "Track removed",
            queue,
            None,
        )))
    }

    async fn vote_track(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::QueueResponse>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let vote = request.get_ref();
        let id = parse_id(&vote.id)?;
        if options.user.is_none() && !self.app.settings.anonymous_votes {
            return Err(crate::queue::anonymous_vote_refused().into());
        }
        let cmd = QueueCommand::Vote {
            id,
            up: vote.up,
            by: options.user,
        };
        let (outcome, _) = self.write(cmd, &options, false).await?;
        match outcome {
            Outcome::Track(track) => Ok(Response::new(pb::QueueResponse {
                message: "Vote updated".into(),
                queue: vec![track_message(&track)],
            })),
            other => Err(unexpected(other).into()),
        }
    }

    async fn get_queue(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::QueueList>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let (queue, _) = ask(&self.app.queue, |reply| {
            QueueMsg::Queue(options.consistency, (0, usize::MAX), reply)
        })
        .await?;
        Ok(Response::new(pb::QueueList {
            queue: track_list(&queue),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::TrackId>,
    ) -> Result<Response<pb::Track>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let id = parse_id(&request.get_ref().id)?;
        let track = ask(&self.app.queue, |reply| {
            QueueMsg::Metadata(id, options.consistency, reply)
        })
        .await?;
        Ok(Response::new(track_message(&track)))
    }

    async fn play_next(&self, request: Request<pb::Empty>) -> Result<Response<pb::Track>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let played = ask(&self.app.queue, |reply| {
            QueueMsg::PlayNext(options.key.clone(), reply)
        })
        .await?;
        Ok(Response::new(played_message(&played)))
    }

    async fn get_history(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::QueueList>, Status> {
        let options = CallOptions::read(&self.app, &request).await?;
        let history = ask(&self.app.queue, |reply| {
            QueueMsg::History(options.consistency, reply)
        })
        .await?;
        Ok(Response::new(pb::QueueList {
            queue: history.iter().map(played_message).collect(),
        }))
    }
}

/// The gRPC services of one node, ready to serve.
pub struct GrpcServices {
    app: AppState,
}

impl GrpcServices {
    pub(crate) fn new(app: AppState) -> Self {
        Self { app }
    }

    /// Serves on `listener` until `shutdown` resolves; over TLS when `tls` is given (its
    /// configuration must offer ALPN `h2`).
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GrpcError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // v1 and the older v1alpha, which many tools still ask first.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| GrpcError(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| GrpcError(e.to_string()))?;
        let replica = self.app.replica.clone();
        let reporter = tokio::spawn(async move {
            let mut serving = None;
            loop {
                let ready = replica.status().await.ready();
                if serving != Some(ready) {
                    let status = if ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    for service in ["", "queue.QueueService"] {
                        health.set_service_status(service, status).await;
                    }
                    serving = Some(ready);
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        });
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(QueueServiceServer::new(QueueGrpc { app: self.app }));
        let served = match tls {
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            Some(tls) => {
                let (incoming, accepting) = tls_incoming(listener, tls);
                let served = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await;
                accepting.abort();
                served
            }
        };
        reporter.abort();
        served.map_err(|e| GrpcError(e.to_string()))
    }
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection to the gRPC server.
struct TlsConnection(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and hands over the connections whose TLS handshake completed; each
/// handshake runs in its own task, so a slow client holds up no other. The task accepting is
/// returned to be stopped with the server.
fn tls_incoming(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) -> (
    impl futures_util::Stream<Item = Result<TlsConnection, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (ready, mut handed) = tokio::sync::mpsc::channel::<TlsConnection>(64);
    let accepting = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, ready) = (tls.clone(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(TlsConnection(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    let incoming = futures_util::stream::poll_fn(move |cx| handed.poll_recv(cx).map(|c| c.map(Ok)));
    (incoming, accepting)
}

#[derive(Debug, thiserror::Error)]
#[error("the gRPC server failed: {0}")]
pub struct GrpcError(String);
