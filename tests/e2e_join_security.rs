//! The manager port is mutual TLS: joins need a valid token, sessions need a certificate from
//! the cluster CA that has not expired, and a worker's certificate cannot reach manager-only
//! services. Certificates renew before they expire.

mod common;

use common::daemon::TestDaemon;
use common::require_root;
use shoal_proto::control_client::ControlClient;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::join_client::JoinClient;
use shoal_proto::managers_client::ManagersClient;
use shoal_proto::node_certificates_client::NodeCertificatesClient;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::{
    IssueNodeCertificateRequest, JoinTokenRequest, NodeRole, ProbeRequest, RaftMessage,
    RenewCertificateRequest, SessionRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

async fn control(d: &TestDaemon) -> ControlClient<Channel> {
    let path = d.socket();
    let channel = Endpoint::from_static("http://shoal.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("control socket");
    ControlClient::new(channel)
}

async fn manager_channel(d: &TestDaemon, identity: Option<Identity>) -> Channel {
    let ca = std::fs::read_to_string(d.data_dir().join("certs/ca.crt")).expect("ca.crt");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("swarm-manager.shoal");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{}", d.manager_addr()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connects to the manager port")
}

async fn token(d: &TestDaemon, role: NodeRole, rotate: bool) -> String {
    control(d)
        .await
        .join_token(JoinTokenRequest {
            role: role as i32,
            rotate,
        })
        .await
        .expect("join token")
        .into_inner()
        .token
}

#[test]
fn joining_and_calling_the_manager_port_needs_the_right_credentials() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // No certificate: no session.
        let anonymous = manager_channel(&d, None).await;
        let err = DispatcherClient::new(anonymous.clone())
            .session(SessionRequest::default())
            .await
            .expect_err("a session needs a certificate");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

        // A worker token gets a worker certificate for the joiner's own key.
        let worker_token = token(&d, NodeRole::Worker, false).await;
        assert!(worker_token.starts_with("SWMTKN-1-"));
        let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_csr("w").expect("csr");
        let issued = JoinClient::new(anonymous.clone())
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: worker_token.clone(),
                csr_pem: csr_pem.clone(),
            })
            .await
            .expect("the token is accepted")
            .into_inner();
        assert_eq!(issued.role(), NodeRole::Worker);

        // The worker may open a session as itself, not call Raft.
        let worker =
            manager_channel(&d, Some(Identity::from_pem(&issued.cert_pem, &key_pem))).await;
        let mut stream = DispatcherClient::new(worker.clone())
            .session(SessionRequest {
                node_id: issued.node_id.clone(),
                description: None,
            })
            .await
            .expect("a certified worker opens a session")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("a message")
            .expect("assignments");
        assert_eq!(first.node_id, issued.node_id);
        let err = RaftClient::new(worker)
            .vote(RaftMessage { data: Vec::new() })
            .await
            .expect_err("workers cannot call Raft");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

        // A rotated token stops working; a garbage one is refused.
        token(&d, NodeRole::Worker, true).await;
        let err = JoinClient::new(anonymous.clone())
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: worker_token,
                csr_pem: csr_pem.clone(),
            })
            .await
            .expect_err("the rotated token is refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        let err = JoinClient::new(anonymous)
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: "SWMTKN-1-nope".into(),
                csr_pem,
            })
            .await
            .expect_err("garbage is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    });
}

#[test]
fn a_certificate_from_another_cluster_is_refused() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let other = shoal_manager::ca::ClusterCa::generate("other", shoal_proto::now_ms() / 1000)
            .expect("another CA");
        let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_csr("x").expect("csr");
        let cert = other
            .sign_csr(
                &csr_pem,
                "x",
                shoal_manager::ca::Role::Manager,
                shoal_proto::now_ms() / 1000,
                1,
            )
            .expect("signed");
        let ca = std::fs::read_to_string(d.data_dir().join("certs/ca.crt")).expect("ca.crt");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("swarm-manager.shoal")
            .identity(Identity::from_pem(cert, key_pem));
        let endpoint = Endpoint::from_shared(format!("https://{}", d.manager_addr()))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls");
        // The handshake itself fails, or the first call does.
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => DispatcherClient::new(channel)
                .session(SessionRequest::default())
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a foreign CA's certificate must not open a session"
        );
    });
}

/// The serial of the certificate in `<data dir>/certs/node.crt`: changes on every renewal.
fn cert_of(d: &TestDaemon) -> String {
    std::fs::read_to_string(d.data_dir().join("certs/node.crt")).unwrap_or_default()
}

#[test]
fn expired_and_forged_credentials_are_refused_and_certificates_renew_before_expiry() {
    if !require_root() {
        return;
    }
    // Six-second certificates: renewed every 3–5 s, so a node that stays in the cluster for
    // several lifetimes proves that renewal works.
    let d = TestDaemon::start_with(vec!["--cert-expiry".into(), "6s".into()]);
    let worker = TestDaemon::start_worker(&d);
    let worker_certs = vec![cert_of(&worker)];
    let manager_cert = cert_of(&d);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (key_pem, cert_pem) = rt.block_on(async {
        let anonymous = manager_channel(&d, None).await;
        // A token with the right CA digest but a made-up secret.
        let ca = std::fs::read_to_string(d.data_dir().join("certs/ca.crt")).expect("ca.crt");
        let digest = shoal_manager::ca::pem_digest(&ca).expect("digest");
        let forged = shoal_manager::ca::JoinToken::generate(digest).to_string();
        let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_csr("w").expect("csr");
        let err = JoinClient::new(anonymous.clone())
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: forged,
                csr_pem: csr_pem.clone(),
            })
            .await
            .expect_err("a forged secret is refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

        // Renewing needs a certificate in the first place.
        let err = NodeCertificatesClient::new(anonymous.clone())
            .renew(RenewCertificateRequest {
                csr_pem: csr_pem.clone(),
            })
            .await
            .expect_err("no certificate, no renewal");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

        let issued = JoinClient::new(anonymous)
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: token(&d, NodeRole::Worker, false).await,
                csr_pem,
            })
            .await
            .expect("a worker certificate")
            .into_inner();
        let identity = shoal_manager::ca::identity_of(&issued.cert_pem).expect("identity");
        assert!(
            identity.not_after - identity.not_before <= 7,
            "the cluster's expiry applies: {identity:?}"
        );
        // While valid, the worker's certificate opens a session, and cannot call the
        // managers' own services.
        let worker_channel =
            manager_channel(&d, Some(Identity::from_pem(&issued.cert_pem, &key_pem))).await;
        DispatcherClient::new(worker_channel.clone())
            .session(SessionRequest {
                node_id: issued.node_id.clone(),
                description: None,
            })
            .await
            .expect("a valid certificate opens a session");
        let err = ManagersClient::new(worker_channel)
            .probe(ProbeRequest {})
            .await
            .expect_err("workers cannot call manager RPCs");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        (key_pem, issued.cert_pem)
    });

    // Over two lifetimes: the joined worker and the manager renew, and the worker stays in.
    let mut worker_certs = worker_certs;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(14);
    while std::time::Instant::now() < deadline {
        let now = cert_of(&worker);
        if worker_certs.last() != Some(&now) {
            worker_certs.push(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        worker_certs.len() >= 3,
        "the worker renewed its certificate at least twice in 14 s: {} certificates\n{}",
        worker_certs.len(),
        worker.log()
    );
    assert_ne!(cert_of(&d), manager_cert, "the manager renewed its own");
    // (The node made by hand above had one session and is down by now.)
    d.wait_for(
        "the manager and the worker still ready",
        std::time::Duration::from_secs(10),
        || {
            let nodes = d.json(&["node", "ls", "--format", "json"]);
            nodes
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["status"]["state"] == "ready").count() == 2)
        },
    );

    // The certificate fetched by hand was never renewed: it has expired, and is refused.
    rt.block_on(async {
        let ca = std::fs::read_to_string(d.data_dir().join("certs/ca.crt")).expect("ca.crt");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("swarm-manager.shoal")
            .identity(Identity::from_pem(cert_pem, key_pem));
        let endpoint = Endpoint::from_shared(format!("https://{}", d.manager_addr()))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls");
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => DispatcherClient::new(channel)
                .session(SessionRequest::default())
                .await
                .is_err(),
        };
        assert!(refused, "an expired certificate must not open a session");
    });
}
