//! The manager port is mutual TLS: joins need a valid token, sessions need a certificate from
//! the cluster CA, and a worker's certificate cannot reach manager-only services.

mod common;

use common::daemon::TestDaemon;
use common::require_root;
use shoal_proto::control_client::ControlClient;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::join_client::JoinClient;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::{
    IssueNodeCertificateRequest, JoinTokenRequest, NodeRole, RaftMessage, SessionRequest,
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
