//! Joining a cluster from a node's side (Swarm's scheme).
//!
//! 1. Fetch the CA certificate from the manager over TLS that trusts nothing yet, and keep it
//!    only if its sha256 is the digest the token pins: a man in the middle cannot pass.
//! 2. Over TLS verified with that CA, send the token and a CSR for a key made here; get back
//!    the node id and certificate. The key never leaves the node, and the secret is only ever
//!    sent to a verified manager.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use shoal_manager::ca::{self, JoinToken};
use shoal_proto::join_client::JoinClient;
use shoal_proto::{GetRootCaRequest, IssueNodeCertificateRequest, NodeRole};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

use super::identity::{NodeCerts, MANAGER_NAME};

/// Joins the cluster whose manager listens at `manager` with `token`; saves the node's
/// certificates in `data_dir` and returns its node id and role.
pub async fn join(data_dir: &Path, manager: &str, token: &str) -> Result<(String, NodeRole)> {
    let token = JoinToken::parse(token)?;
    let ca_pem = fetch_pinned_ca(manager, &token).await?;
    let channel = Endpoint::from_shared(format!("https://{manager}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .domain_name(MANAGER_NAME),
        )?
        .connect()
        .await
        .with_context(|| format!("cannot reach the manager at {manager}"))?;
    let (key_pem, csr_pem) = ca::node_key_and_csr("joining")?;
    let issued = JoinClient::new(channel)
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: token.to_string(),
            csr_pem,
        })
        .await
        .map_err(|s| anyhow!("the manager refused to join this node: {}", s.message()))?
        .into_inner();
    let certs = NodeCerts {
        ca_pem,
        cert_pem: issued.cert_pem.clone(),
        key_pem,
    };
    certs.save(data_dir)?;
    Ok((issued.node_id.clone(), issued.role()))
}

/// Step 1: the CA certificate, accepted only if it matches the token's pin.
async fn fetch_pinned_ca(manager: &str, token: &JoinToken) -> Result<String> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS settings")?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(TrustOnPin))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = manager.to_string();
    // The scheme is http: TLS is done by the connector itself, tonic speaks h2 over it.
    let channel = Endpoint::from_shared(format!("http://{manager}"))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = ServerName::try_from(MANAGER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the manager at {manager}"))?;
    let ca_pem = JoinClient::new(channel)
        .get_root_ca(GetRootCaRequest {})
        .await
        .map_err(|s| {
            anyhow!(
                "the manager at {manager} did not give its CA: {}",
                s.message()
            )
        })?
        .into_inner()
        .cert_pem;
    if ca::pem_digest(&ca_pem)? != token.ca_digest {
        bail!(
            "the manager at {manager} presented a CA that does not match the join token: \
             check the address and the token (or someone is intercepting the connection)"
        );
    }
    Ok(ca_pem)
}

/// Accepts any server certificate for the one call that fetches the CA; the CA itself is then
/// checked against the token's pin, and nothing secret is sent on this connection.
#[derive(Debug)]
struct TrustOnPin;

impl ServerCertVerifier for TrustOnPin {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
