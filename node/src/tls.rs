//! TLS settings from PEM files: HTTPS and gRPC over TLS (`[[nodes]] tls_cert`/`tls_key`)
//! and the mutually authenticated cluster transport (`[cluster_tls]`). rustls with aws-lc-rs,
//! the provider already in the tree through ractor_cluster.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs rustls's process-wide provider, which reqwest's HTTPS needs before any client
/// is built (it would otherwise panic). Call first thing; later calls do nothing.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn certificates(what: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read the certificates in {what} {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{what} {} holds no certificate", path.display());
    }
    Ok(certs)
}

fn private_key(what: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read the private key in {what} {}", path.display()))
}

/// TLS for the client-facing ports from the certificate chain at `cert` and the private key
/// at `key` (read once): one acceptor for HTTP, offering ALPN `http/1.1` only (the server speaks
/// HTTP/1), and one for gRPC, offering `h2`.
pub fn client_acceptors(cert: &Path, key: &Path) -> anyhow::Result<(TlsAcceptor, TlsAcceptor)> {
    let chain = certificates("tls_cert", cert)?;
    let key = private_key("tls_key", key)?;
    let acceptor = |alpn: &[u8]| -> anyhow::Result<TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .context("tls_cert and tls_key do not make a usable certificate")?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    };
    Ok((acceptor(b"http/1.1")?, acceptor(b"h2")?))
}

/// The cluster transport's TLS: peers must present a certificate of the CA at `ca_cert`, and
/// this node presents `cert`/`key` both when it accepts and when it connects.
pub fn cluster(ca_cert: &Path, cert: &Path, key: &Path) -> anyhow::Result<raft::ClusterTls> {
    let mut roots = RootCertStore::empty();
    for ca in certificates("[cluster_tls] ca_cert", ca_cert)? {
        roots
            .add(ca)
            .context("[cluster_tls] ca_cert is not a usable CA certificate")?;
    }
    let roots = Arc::new(roots);
    let chain = certificates("[cluster_tls] cert", cert)?;
    let key = private_key("[cluster_tls] key", key)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .context("[cluster_tls] ca_cert cannot verify peers")?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("[cluster_tls] cert and key do not make a usable certificate")?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("[cluster_tls] cert and key do not make a usable client certificate")?;
    Ok(raft::ClusterTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// A client configuration that trusts the CA certificates at `ca_cert`: for the CLI talking to
/// nodes that serve HTTPS with certificates of that CA.
pub fn trusting(ca_cert: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in certificates("--ca-cert", ca_cert)? {
        roots
            .add(ca)
            .context("--ca-cert is not a usable CA certificate")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
