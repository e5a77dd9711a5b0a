//! The seed's gRPC queue service on a real 3-process cluster, through a tonic client on every
//! node: the seed's calls and shapes, writes from any node seen on every node, exactly-once
//! `PlayNext` under a retried idempotency key, per-user votes from a bearer token, error codes,
//! the standard health service following readiness, and server reflection.

mod common;

use std::time::Duration;

use api::grpc::pb::{self, queue_service_client::QueueServiceClient};
use common::{CONVERGE_TIMEOUT, TestCluster, eventually, fresh_key, register};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

type Client = QueueServiceClient<Channel>;

async fn channel(c: &TestCluster, id: u64) -> Channel {
    Channel::from_shared(format!("http://{}", c.grpc_addr(id)))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to node {id}'s gRPC port: {e}"))
}

fn track(id: &str, title: &str) -> pb::Track {
    pb::Track {
        id: id.into(),
        title: title.into(),
        artist: "Artist".into(),
        votes: 0,
        duration: 200,
    }
}

/// `message` with `name: value` metadata.
fn with<T>(message: T, metadata: &[(&'static str, String)]) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("ASCII metadata"));
    }
    request
}

fn ids(queue: &[pb::Track]) -> Vec<&str> {
    queue.iter().map(|t| t.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_grpc_service_on_every_node() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];
    let mut clients: Vec<(u64, Client)> = Vec::new();
    for id in c.ids() {
        clients.push((id, QueueServiceClient::new(channel(&c, id).await)));
    }

    // Health follows /ready, for the whole server and for the queue service.
    for id in c.ids() {
        let mut health = HealthClient::new(channel(&c, id).await);
        for service in ["", "queue.QueueService"] {
            eventually(
                "the health service says SERVING",
                CONVERGE_TIMEOUT,
                async || {
                    let answer = health
                        .check(HealthCheckRequest {
                            service: service.into(),
                        })
                        .await
                        .ok()?;
                    (answer.get_ref().status == ServingStatus::Serving as i32).then_some(())
                },
            )
            .await;
        }
    }

    // Reflection lists the services (what grpcurl asks first).
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel(&c, follower).await);
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream_once(ask))
            .await
            .expect("reflection answers")
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("a reflection answer")
            .expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for wanted in ["queue.QueueService", "grpc.health.v1.Health"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    }

    // Every node takes writes; every node sees every write at once (linearizable reads).
    for (id, client) in &mut clients {
        let added = client
            .add_track(track(&format!("10{id}"), &format!("Song {id}")))
            .await
            .unwrap_or_else(|e| panic!("AddTrack on node {id}: {e}"))
            .into_inner();
        assert_eq!(added.message, "Track added");
        assert!(ids(&added.queue).contains(&format!("10{id}").as_str()));
    }
    for (id, client) in &mut clients {
        let queue = client
            .get_queue(pb::Empty {})
            .await
            .expect("GetQueue")
            .into_inner();
        assert_eq!(ids(&queue.queue), ["101", "102", "103"], "node {id}");
    }

    // The seed's calls: vote up, vote down (the answer carries the voted track, not the queue).
    let (_, client) = clients
        .iter_mut()
        .find(|(id, _)| *id == follower)
        .expect("the follower's client");
    let up = client
        .vote_track(pb::VoteRequest {
            id: "102".into(),
            up: true,
        })
        .await
        .expect("VoteTrack")
        .into_inner();
    assert_eq!(up.message, "Vote updated");
    assert_eq!(ids(&up.queue), ["102"]);
    assert_eq!(up.queue[0].votes, 1);
    let down = client
        .vote_track(pb::VoteRequest {
            id: "102".into(),
            up: false,
        })
        .await
        .expect("VoteTrack")
        .into_inner();
    assert_eq!(down.queue[0].votes, 0);
    let meta = client
        .get_metadata(pb::TrackId { id: "103".into() })
        .await
        .expect("GetMetadata")
        .into_inner();
    assert_eq!(
        (meta.title.as_str(), meta.duration, meta.votes),
        ("Song 3", 200, 0)
    );

    // A signed-in user's vote counts once however often it is sent.
    let user = register(&c.api(follower), "grpc-user").await;
    let bearer = ("authorization", format!("Bearer {}", user.token));
    for _ in 0..3 {
        let voted = client
            .vote_track(with(
                pb::VoteRequest {
                    id: "103".into(),
                    up: true,
                },
                std::slice::from_ref(&bearer),
            ))
            .await
            .expect("an authenticated VoteTrack")
            .into_inner();
        assert_eq!(voted.queue[0].votes, 1);
    }
    let minimal = client
        .add_track(with(
            track("104", "Minimal"),
            &[("prefer", "return=minimal".into())],
        ))
        .await
        .expect("AddTrack, minimal")
        .into_inner();
    assert_eq!(ids(&minimal.queue), ["104"]);

    // Errors: the REST message with the nearest gRPC code.
    let cases = [
        (
            client
                .get_metadata(pb::TrackId { id: "999".into() })
                .await
                .map(drop),
            Code::NotFound,
        ),
        (
            client
                .get_metadata(pb::TrackId { id: "abc".into() })
                .await
                .map(drop),
            Code::InvalidArgument,
        ),
        (
            client.add_track(track("101", "Again")).await.map(drop),
            Code::AlreadyExists,
        ),
        (
            client
                .remove_track(pb::TrackId { id: "998".into() })
                .await
                .map(drop),
            Code::NotFound,
        ),
        (
            client
                .add_track(pb::Track {
                    duration: -5,
                    ..track("105", "Negative")
                })
                .await
                .map(drop),
            Code::InvalidArgument,
        ),
        (
            client
                .vote_track(with(
                    pb::VoteRequest {
                        id: "101".into(),
                        up: true,
                    },
                    &[("authorization", "Bearer nope".into())],
                ))
                .await
                .map(drop),
            Code::Unauthenticated,
        ),
    ];
    for (i, (result, code)) in cases.into_iter().enumerate() {
        let status = result.expect_err("an error");
        assert_eq!(status.code(), code, "case {i}: {status:?}");
        assert!(!status.message().is_empty(), "case {i}: a message");
    }

    // PlayNext retried with one idempotency key on two nodes plays one track, once.
    let key = ("idempotency-key", fresh_key("play"));
    let first = client
        .play_next(with(pb::Empty {}, std::slice::from_ref(&key)))
        .await
        .expect("PlayNext")
        .into_inner();
    let (_, other) = clients
        .iter_mut()
        .find(|(id, _)| *id == leader)
        .expect("the leader's client");
    let retried = other
        .play_next(with(pb::Empty {}, &[key]))
        .await
        .expect("PlayNext retried")
        .into_inner();
    assert_eq!(first, retried);
    assert_eq!(first.id, "103", "the most votes play first");
    let history = other
        .get_history(pb::Empty {})
        .await
        .expect("GetHistory")
        .into_inner();
    assert_eq!(ids(&history.queue), ["103"]);
    let removed = other
        .remove_track(pb::TrackId { id: "104".into() })
        .await
        .expect("RemoveTrack")
        .into_inner();
    assert_eq!(ids(&removed.queue), ["101", "102"]);

    // The leader dies: the followers answer again once a new leader is elected.
    c.kill9(leader);
    let survivor = c.followers(leader)[0];
    let (_, client) = clients
        .iter_mut()
        .find(|(id, _)| *id == survivor)
        .expect("a survivor's client");
    let queue = eventually(
        "a survivor answers GetQueue",
        CONVERGE_TIMEOUT,
        async || match client.get_queue(pb::Empty {}).await {
            Ok(answer) => Some(answer.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                None
            }
        },
    )
    .await;
    assert_eq!(ids(&queue.queue), ["101", "102"]);
}

/// A one-message client stream.
fn tokio_stream_once<T: Send + 'static>(
    message: T,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter([message])
}

const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/proto");

/// Runs a Python script from `api/proto` and returns its stdout, failing on a non-zero exit.
fn python(script: &str, args: &[&str], stubs: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .arg(format!("{PROTO_DIR}/{script}"))
        .args(args)
        .env("PYTHONPATH", stubs)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_python_client_and_tests_against_followers() {
    if !common::python_grpc_available() {
        return;
    }
    // The stubs, generated from the proto as the seed's README says.
    let stubs = tempfile::tempdir().expect("a temp dir for the stubs");
    let generated = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", &format!("-I{PROTO_DIR}")])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg("queue.proto")
        .current_dir(PROTO_DIR)
        .status()
        .expect("run grpc_tools.protoc");
    assert!(generated.success(), "grpc_tools.protoc failed");

    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let followers = c.followers(leader);
    let (one, two) = (
        c.grpc_addr(followers[0]).to_string(),
        c.grpc_addr(followers[1]).to_string(),
    );
    let client = |args: &[&str]| {
        let mut all = vec!["--target", one.as_str()];
        all.extend_from_slice(args);
        python("client.py", &all, stubs.path())
    };

    // The seed README's commands, in its order.
    let added = client(&[
        "add",
        "--id",
        "123",
        "--title",
        "Song Title",
        "--artist",
        "Artist Name",
        "--duration",
        "200",
    ]);
    assert!(
        added.contains("Track added") && added.contains("\"123\""),
        "{added}"
    );
    client(&[
        "add",
        "--id",
        "124",
        "--title",
        "Other",
        "--artist",
        "Band",
        "--duration",
        "100",
    ]);
    let up = client(&["vote", "--id", "124", "--up", "true"]);
    assert!(up.contains("votes: 1"), "{up}");
    let queue = client(&["queue"]);
    let first_124 = queue.find("\"124\"").expect("124 queued");
    let first_123 = queue.find("\"123\"").expect("123 queued");
    assert!(first_124 < first_123, "the voted track leads: {queue}");
    let down = client(&["vote", "--id", "124", "--up", "false"]);
    assert!(
        !down.contains("votes:"),
        "back to 0 votes (proto3 leaves 0 out): {down}"
    );
    let meta = client(&["metadata", "--id", "123"]);
    assert!(
        meta.contains("Song Title") && meta.contains("duration: 200"),
        "{meta}"
    );
    let played = client(&["play"]);
    assert!(played.contains("\"123\""), "{played}");
    let history = client(&["history"]);
    assert!(history.contains("Song Title"), "{history}");
    let removed = client(&["remove", "--id", "124"]);
    assert!(
        removed.contains("Track removed") && !removed.contains("\"124\""),
        "{removed}"
    );
    let missing = std::process::Command::new("python3")
        .arg(format!("{PROTO_DIR}/client.py"))
        .args(["--target", &one, "metadata", "--id", "999"])
        .env("PYTHONPATH", stubs.path())
        .output()
        .expect("run client.py");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("not in the queue"),
        "{stderr}"
    );

    // The seed's test suite, on two followers (its sync test adds on one, reads on the other).
    let report = python("seed_tests.py", &[&one, &two], stubs.path());
    assert!(report.contains("ALL TESTS PASSED"), "{report}");
}
