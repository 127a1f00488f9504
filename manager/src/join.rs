//! Joining and the identities that follow from it.
//!
//! - [`JoinService`]: the `Join` gRPC service: hands out the CA certificate (the joiner checks
//!   it against its token's digest) and signs a joiner's CSR once its token's secret matches.
//! - [`peer_identity`]: who the peer of a request is, from its verified TLS certificate;
//!   [`ManagersOnly`] is the interceptor that keeps workers (and removed nodes) away from
//!   manager-only services.
//! - [`new_cluster`]: the cluster object of a fresh cluster, CA and join secrets included.

use shoal_proto::join_server::{Join, JoinServer};
use shoal_proto::{
    Cluster, GetRootCaRequest, GetRootCaResponse, IssueNodeCertificateRequest,
    IssueNodeCertificateResponse, JoinSecrets, NodeRole, RootCa,
};
use tonic::{Request, Response, Status};

use crate::ca::{self, ClusterCa, JoinToken, NodeIdentity, Role};
use crate::consensus::new_id;
use crate::store::Store;

/// A fresh cluster: its id, a new CA, and new join secrets.
pub fn new_cluster(now_secs: i64) -> Result<Cluster, ca::CaError> {
    let id = new_id();
    let ca = ClusterCa::generate(&id, now_secs)?;
    Ok(Cluster {
        id,
        meta: None,
        name: "default".into(),
        root_ca: Some(RootCa {
            cert_pem: ca.cert_pem().into(),
            key_pem: ca.key_pem().into(),
        }),
        join_secrets: Some(JoinSecrets {
            worker: JoinToken::generate(ca.digest()).secret,
            manager: JoinToken::generate(ca.digest()).secret,
        }),
        revoked_nodes: Vec::new(),
        node_cert_expiry_secs: 0,
        overlay_address_pool: String::new(),
        ingress_port_range: String::new(),
    })
}

/// How long the cluster's node certificates live, in seconds.
pub fn cert_lifetime(cluster: &Cluster) -> i64 {
    match cluster.node_cert_expiry_secs {
        0 => ca::DEFAULT_NODE_CERT_SECS,
        secs => secs.max(ca::MIN_NODE_CERT_SECS),
    }
}

/// The cluster's CA, loaded from the replicated cluster object.
pub fn cluster_ca(cluster: &Cluster) -> Result<ClusterCa, Status> {
    let root = cluster
        .root_ca
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("this cluster has no CA yet"))?;
    ClusterCa::from_pem(&root.cert_pem, &root.key_pem).map_err(|e| Status::internal(e.to_string()))
}

/// The printable join token for `role`.
pub fn join_token(cluster: &Cluster, role: NodeRole) -> Result<String, Status> {
    let ca = cluster_ca(cluster)?;
    let secrets = cluster
        .join_secrets
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("this cluster has no join secrets yet"))?;
    let secret = match role {
        NodeRole::Worker => &secrets.worker,
        NodeRole::Manager => &secrets.manager,
    };
    Ok(JoinToken {
        ca_digest: ca.digest(),
        secret: secret.clone(),
    }
    .to_string())
}

#[derive(Clone)]
pub struct JoinService {
    store: Store,
}

impl JoinService {
    pub fn new(store: Store) -> JoinService {
        JoinService { store }
    }

    pub fn into_service(self) -> JoinServer<JoinService> {
        JoinServer::new(self)
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn get_root_ca(
        &self,
        _: Request<GetRootCaRequest>,
    ) -> Result<Response<GetRootCaResponse>, Status> {
        let cert_pem = self
            .store
            .read()
            .cluster
            .as_ref()
            .and_then(|c| c.root_ca.as_ref())
            .map(|ca| ca.cert_pem.clone())
            .ok_or_else(|| Status::unavailable("this manager has no cluster CA yet"))?;
        Ok(Response::new(GetRootCaResponse { cert_pem }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let r = request.into_inner();
        let token =
            JoinToken::parse(&r.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cluster = self
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("this manager has no cluster yet"))?;
        let ca = cluster_ca(&cluster)?;
        if token.ca_digest != ca.digest() {
            return Err(Status::permission_denied(
                "the join token is for another cluster (its CA digest does not match)",
            ));
        }
        let secrets = cluster.join_secrets.clone().unwrap_or_default();
        let matches = |secret: &str| {
            token.secret_matches(&JoinToken {
                ca_digest: token.ca_digest,
                secret: secret.to_string(),
            })
        };
        let role = if matches(&secrets.manager) {
            Role::Manager
        } else if matches(&secrets.worker) {
            Role::Worker
        } else {
            return Err(Status::permission_denied(
                "the join token is invalid or was rotated: get a new one with `shoal join-token`",
            ));
        };
        let node_id = new_id();
        let now = shoal_proto::now_ms() / 1000;
        let cert_pem = ca
            .sign_csr_for(&r.csr_pem, &node_id, role, now, cert_lifetime(&cluster))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(node = %node_id, ?role, "issued a node certificate");
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id,
            cert_pem,
            role: match role {
                Role::Worker => NodeRole::Worker,
                Role::Manager => NodeRole::Manager,
            } as i32,
        }))
    }
}

/// Who the peer is, from the certificate TLS verified against the cluster CA. `None` when the
/// peer showed no certificate (only the Join service accepts that).
pub fn peer_identity<T>(request: &Request<T>) -> Option<NodeIdentity> {
    let certs = request.peer_certs()?;
    let first = certs.first()?;
    ca::identity_of_der(first.as_ref()).ok()
}

/// Interceptor for manager-only services (Raft, Managers): the peer must hold a manager
/// certificate of a node that was not removed from the cluster.
#[derive(Clone)]
pub struct ManagersOnly {
    store: Store,
}

impl ManagersOnly {
    pub fn new(store: Store) -> ManagersOnly {
        ManagersOnly { store }
    }
}

impl tonic::service::Interceptor for ManagersOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        refuse_removed(&self.store, require_manager(request)?)
    }
}

/// Lets the request through unless its peer's node was removed from the cluster (`node rm`).
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn refuse_removed(store: &Store, request: Request<()>) -> Result<Request<()>, Status> {
    if let Some(id) = peer_identity(&request) {
        let revoked = store
            .read()
            .cluster
            .as_ref()
            .is_some_and(|c| c.revoked_nodes.contains(&id.node_id));
        if revoked {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster",
                id.node_id
            )));
        }
    }
    Ok(request)
}

/// The role check of [`ManagersOnly`], without the revocation check.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_manager(request: Request<()>) -> Result<Request<()>, Status> {
    match peer_identity(&request) {
        Some(id) if id.role == Role::Manager => Ok(request),
        Some(id) => Err(Status::permission_denied(format!(
            "node {} is a worker: only managers may call this",
            id.node_id
        ))),
        None => Err(Status::unauthenticated(
            "a cluster certificate is required: join the cluster first",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change;
    use shoal_proto::store_object::Object;
    use shoal_proto::{ChangeKind, StoreCommand};

    fn service_with_cluster() -> (JoinService, Cluster) {
        let store = Store::new();
        let cluster = new_cluster(1_795_381_629).expect("cluster");
        store
            .apply(
                1,
                StoreCommand {
                    request_id: "r".into(),
                    changes: vec![change(ChangeKind::Create, Object::Cluster(cluster.clone()))],
                    timestamp: 1,
                },
            )
            .expect("applies");
        (JoinService::new(store), cluster)
    }

    async fn join(
        service: &JoinService,
        token: String,
    ) -> Result<IssueNodeCertificateResponse, Status> {
        let (_key, csr_pem) = ca::node_key_and_csr("me").expect("csr");
        service
            .issue_node_certificate(Request::new(IssueNodeCertificateRequest { token, csr_pem }))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn tokens_grant_their_role_and_nothing_else() {
        let (service, cluster) = service_with_cluster();
        let worker = join(
            &service,
            join_token(&cluster, NodeRole::Worker).expect("token"),
        )
        .await
        .expect("worker joins");
        assert_eq!(worker.role(), NodeRole::Worker);
        let id = ca::identity_of(&worker.cert_pem).expect("identity");
        assert_eq!((id.node_id, id.role), (worker.node_id, Role::Worker));
        let manager = join(
            &service,
            join_token(&cluster, NodeRole::Manager).expect("token"),
        )
        .await
        .expect("manager joins");
        assert_eq!(manager.role(), NodeRole::Manager);
    }

    #[tokio::test]
    async fn wrong_tokens_are_refused() {
        let (service, cluster) = service_with_cluster();
        let ca = cluster_ca(&cluster).expect("ca");
        let forged = JoinToken::generate(ca.digest()).to_string();
        let err = join(&service, forged).await.expect_err("unknown secret");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let other = new_cluster(1).expect("another cluster");
        let foreign = join_token(&other, NodeRole::Worker).expect("token");
        let err = join(&service, foreign).await.expect_err("another CA");
        assert!(
            err.message().contains("another cluster"),
            "{}",
            err.message()
        );
        let err = join(&service, "garbage".into())
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
