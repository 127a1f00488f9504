//! Node certificate renewal: the `NodeCertificates` gRPC service.
//!
//! Every node renews its certificate before it expires (at a random 50–80 % of its lifetime,
//! Swarm's rule) and whenever the cluster wants it in another role: a renewed certificate
//! carries the role the store has for the node *now*, so `node promote` and `node demote`
//! reach the node this way (it then restarts in its new role). The caller proves who it is
//! with its current certificate, which TLS has verified against the cluster CA (so an expired
//! certificate, or one from another CA, never gets this far); a removed node is refused.

use shoal_proto::node_certificates_server::{NodeCertificates, NodeCertificatesServer};
use shoal_proto::{IssueNodeCertificateResponse, Node, NodeRole, RenewCertificateRequest};
use tonic::{Request, Response, Status};

use crate::ca::Role;
use crate::consensus::Writer;
use crate::dispatcher::write_status;
use crate::join::{cert_lifetime, cluster_ca, peer_identity};
use crate::store::Store;

/// The role a renewed certificate carries: the node's role in the store, or the one its
/// certificate has while the store has no node for it yet (it has only just joined).
pub fn renewed_role(current: Role, node: Option<&Node>) -> Role {
    match node.map(|n| n.role()) {
        Some(NodeRole::Manager) => Role::Manager,
        Some(NodeRole::Worker) => Role::Worker,
        None => current,
    }
}

pub fn role_of(role: Role) -> NodeRole {
    match role {
        Role::Worker => NodeRole::Worker,
        Role::Manager => NodeRole::Manager,
    }
}

pub struct RenewService {
    store: Store,
    writer: Writer,
}

impl RenewService {
    pub fn new(store: Store, writer: Writer) -> RenewService {
        RenewService { store, writer }
    }

    pub fn into_service(self) -> NodeCertificatesServer<RenewService> {
        NodeCertificatesServer::new(self)
    }
}

#[tonic::async_trait]
impl NodeCertificates for RenewService {
    async fn renew(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let identity = peer_identity(&request).ok_or_else(|| {
            Status::unauthenticated(
                "renewing a certificate needs the current one: join the cluster first",
            )
        })?;
        // A read barrier: a role just changed through another manager is seen here.
        self.writer.linearize().await.map_err(write_status)?;
        let (cluster, node) = {
            let state = self.store.read();
            (
                state.cluster.clone(),
                state.nodes.get(&identity.node_id).cloned(),
            )
        };
        let cluster =
            cluster.ok_or_else(|| Status::unavailable("this manager has no cluster yet"))?;
        if cluster.revoked_nodes.contains(&identity.node_id) {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster: join it again with a new token",
                identity.node_id
            )));
        }
        let role = renewed_role(identity.role, node.as_ref());
        let ca = cluster_ca(&cluster)?;
        let now = shoal_proto::now_ms() / 1000;
        let cert_pem = ca
            .sign_csr_for(
                &request.into_inner().csr_pem,
                &identity.node_id,
                role,
                now,
                cert_lifetime(&cluster),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if role != identity.role {
            tracing::info!(node = %identity.node_id, from = ?identity.role, to = ?role, "issued a certificate for a new role");
        } else {
            tracing::debug!(node = %identity.node_id, "renewed a node certificate");
        }
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: identity.node_id,
            cert_pem,
            role: role_of(role) as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_decides_the_role_once_it_knows_the_node() {
        let mut node = Node::default();
        assert_eq!(renewed_role(Role::Worker, None), Role::Worker);
        assert_eq!(renewed_role(Role::Manager, None), Role::Manager);
        node.set_role(NodeRole::Manager);
        assert_eq!(renewed_role(Role::Worker, Some(&node)), Role::Manager);
        node.set_role(NodeRole::Worker);
        assert_eq!(renewed_role(Role::Manager, Some(&node)), Role::Worker);
    }
}
