//! HTTPS on a node's HTTP port (`[[nodes]] tls_cert`/`tls_key`), with certificates made in the
//! test: a client that trusts the cluster's CA is served, one that does not is refused in the
//! handshake, and a plain-HTTP request gets no answer.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, RootCertStore};

/// Calls `queue.QueueService/GetQueue` (an empty request) over TLS at `argv[1]`, trusting the
/// CA in the file `argv[2]`; exits non-zero if the call fails.
const GRPC_OVER_TLS: &str = r#"
import sys, grpc
target, ca = sys.argv[1], open(sys.argv[2], "rb").read()
channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
get_queue = channel.unary_unary("/queue.QueueService/GetQueue",
    request_serializer=lambda _: b"", response_deserializer=lambda b: b)
get_queue(None, timeout=10)
"#;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A certificate authority: its certificate and what it signs with.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn client(trusting: &CertifiedIssuer<'static, KeyPair>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(trusting.der().clone())
        .expect("add the CA to the roots");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// `GET path` over TLS; the whole answer as text, or the handshake's error.
async fn https_get(tls: &TlsConnector, addr: SocketAddr, path: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_the_clusters_ca_and_nothing_without_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = authority("chorus test CA");
    let stranger = authority("some other CA");
    let key = KeyPair::generate().expect("node key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("node params");
    let cert = params.signed_by(&key, &ca).expect("node cert");
    std::fs::write(dir.path().join("node.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("node.key"), key.serialize_pem()).expect("write key");

    let addrs = common::free_addrs(3);
    let (http, raft, grpc) = (addrs[0], addrs[1], addrs[2]);
    let config = format!(
        r#"cluster_name = "tls"
secret = "test-secret"
admin_token = "test-admin"

[[nodes]]
id = 1
http_addr = "{http}"
raft_addr = "{raft}"
grpc_addr = "{grpc}"
data_dir = "data"
tls_cert = "node.pem"
tls_key = "node.key"
"#
    );
    std::fs::write(dir.path().join("cluster.toml"), config).expect("write config");
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
    let _node = Node(
        Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["start", "--node", "1", "--config"])
            .arg(dir.path().join("cluster.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chorus"),
    );

    let trusted = client(&ca);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        match https_get(&trusted, http, "/ready").await {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break answer,
            last => {
                let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
                assert!(
                    Instant::now() < deadline,
                    "no HTTPS /ready within 60 s; last: {last:?}\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(ready.contains("\"ready\":true"), "{ready}");

    let refused = https_get(&client(&stranger), http, "/health").await;
    let why = refused.expect_err("a client without the cluster's CA must not get through");
    assert!(
        why.contains("certificate"),
        "the handshake fails on the certificate: {why}"
    );

    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(dir.path().join("stranger.pem"), stranger.pem()).expect("write CA");

    // The CLI over HTTPS: `chorus backup` trusting the cluster's CA (https:// from the
    // configuration, since the node has a tls_cert), and refused with another CA.
    let backup = |ca: &str| {
        Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["backup", "--admin-token", "test-admin", "-o"])
            .arg(dir.path().join("cluster.backup"))
            .arg("--ca-cert")
            .arg(dir.path().join(ca))
            .arg("--config")
            .arg(dir.path().join("cluster.toml"))
            .env_remove("CHORUS_ADMIN_TOKEN")
            .output()
            .expect("run chorus backup")
    };
    let saved = backup("ca.pem");
    assert!(
        saved.status.success() && String::from_utf8_lossy(&saved.stdout).contains("checked"),
        "chorus backup over HTTPS failed: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let refused = backup("stranger.pem");
    assert!(
        !refused.status.success(),
        "a CLI without the cluster's CA must fail"
    );

    // gRPC over TLS with the same certificate, from the Python grpcio client the seed uses.
    if common::python_grpc_available() {
        let call = |ca: &str| {
            Command::new("python3")
                .args(["-c", GRPC_OVER_TLS, &grpc.to_string()])
                .arg(dir.path().join(ca))
                .output()
                .expect("run python3")
        };
        let trusted = call("ca.pem");
        assert!(
            trusted.status.success(),
            "GetQueue over TLS failed: {}",
            String::from_utf8_lossy(&trusted.stderr)
        );
        let refused = call("stranger.pem");
        assert!(
            !refused.status.success(),
            "a client without the CA must fail"
        );
    }

    // Plain HTTP on the HTTPS port: no HTTP answer.
    let mut plain = TcpStream::connect(http).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP is not served on a TLS port"
    );
}

/// Writes `name.pem` and `name.key` in `dir`: a certificate for 127.0.0.1 signed by `ca`.
fn node_certificate(
    dir: &std::path::Path,
    name: &str,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (String, String) {
    let key = KeyPair::generate().expect("node key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("node params");
    let cert = params.signed_by(&key, ca).expect("node cert");
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_transport_over_mutual_tls_keeps_out_a_node_with_another_ca() {
    let certs = tempfile::tempdir().expect("temp dir");
    let ca = authority("chorus cluster CA");
    let stranger = authority("some other CA");
    let ca_path = certs.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let (cert, key) = node_certificate(certs.path(), "node", &ca);
    let (bad_cert, bad_key) = node_certificate(certs.path(), "stranger", &stranger);

    let extra = format!(
        "[cluster_tls]\nca_cert = \"{}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        ca_path.display()
    );
    // Ready means a leader was elected and everything committed applied: over TLS.
    let mut c = common::TestCluster::start_with(3, &extra).await;
    let leader = c.leader_id().await;
    let follower = c.followers(leader)[0];
    let body = serde_json::json!({"id": 1, "title": "T", "artist": "A", "duration": 60});
    c.api(follower)
        .write_ok("/add_track", common::Body::Json(body))
        .await;

    // A node whose certificate another CA signed (it trusts ours, so only our side refuses).
    let outsider = c.spawn_new_node_with_env(&[
        ("CHORUS_CLUSTER_TLS__CERT", bad_cert.as_str()),
        ("CHORUS_CLUSTER_TLS__KEY", bad_key.as_str()),
    ]);
    let (http, raft) = c.addrs(outsider);
    // The add waits up to 15 s for the node to make progress: longer than the harness's
    // request timeout.
    let add = common::http_client_builder()
        .build()
        .expect("HTTP client")
        .post(format!("{}/cluster/members", c.url(leader)))
        .header("X-Admin-Token", "test-admin")
        .json(&serde_json::json!({
            "id": outsider, "http_addr": http.to_string(), "raft_addr": raft.to_string()
        }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("POST /cluster/members");
    assert_eq!(add.status(), 400);
    let answer: serde_json::Value = add.json().await.expect("a JSON error");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("was not added"), "{message}");
    let view = c.cluster_view(leader).await;
    assert_eq!(
        view["members"].as_array().map(Vec::len),
        Some(3),
        "the outsider is not a member: {view}"
    );
}
