//! Which nodes serve images to the others (`ImagePeerDirectory`, see `proto/peer.proto`): the
//! ready nodes that reported a peer address in their description. Any manager answers from its
//! own store (a follower's may lag by a heartbeat, which only matters for a node that just
//! came or went: the fetching node tries the others).
//!
//! Also the gate for the node-to-node services on a manager's port: [`MembersOnly`] lets in
//! any node of the cluster (a certificate of the cluster CA, any role), unless it was removed.

use shoal_proto::image_peer_directory_server::{ImagePeerDirectory, ImagePeerDirectoryServer};
use shoal_proto::{ImagePeerInfo, ListImagePeersRequest, ListImagePeersResponse, NodeState};
use tonic::{Request, Response, Status};

use crate::join::peer_identity;
use crate::store::{State, Store};

/// The address other nodes reach a node's peer services at: what it reported, with an
/// unspecified host (`0.0.0.0`, `[::]`) replaced by the address its session comes from.
/// `None` when it serves none, or when it reported a loopback address while it is not on this
/// host (nobody else could reach that).
pub fn peer_address(reported: &str, session_ip: &str) -> Option<String> {
    let reported = reported.trim();
    if reported.is_empty() {
        return None;
    }
    let addr: std::net::SocketAddr = match reported.parse() {
        Ok(a) => a,
        // A host name: taken as it is.
        Err(_) => return Some(reported.to_string()),
    };
    let session: Option<std::net::IpAddr> = session_ip.parse().ok();
    if addr.ip().is_unspecified() {
        let ip = session?;
        return Some(std::net::SocketAddr::new(ip, addr.port()).to_string());
    }
    if addr.ip().is_loopback() && session.is_some_and(|s| !s.is_loopback()) {
        return None;
    }
    Some(addr.to_string())
}

/// The ready nodes that serve images, `caller` excepted, in node id order.
pub fn image_peers(state: &State, caller: Option<&str>) -> Vec<ImagePeerInfo> {
    state
        .nodes
        .values()
        .filter(|n| Some(n.id.as_str()) != caller)
        .filter(|n| n.status.as_ref().map(|s| s.state()) == Some(NodeState::Ready))
        .filter_map(|n| {
            let description = n.description.as_ref()?;
            let session_ip = n.status.as_ref().map(|s| s.addr.as_str()).unwrap_or("");
            Some(ImagePeerInfo {
                node_id: n.id.clone(),
                addr: peer_address(&description.peer_addr, session_ip)?,
                hostname: description.hostname.clone(),
            })
        })
        .collect()
}

/// The directory service.
#[derive(Clone)]
pub struct PeerDirectory {
    store: Store,
}

impl PeerDirectory {
    pub fn new(store: Store) -> PeerDirectory {
        PeerDirectory { store }
    }

    pub fn into_service(self) -> ImagePeerDirectoryServer<PeerDirectory> {
        ImagePeerDirectoryServer::new(self)
    }
}

#[tonic::async_trait]
impl ImagePeerDirectory for PeerDirectory {
    async fn list_image_peers(
        &self,
        request: Request<ListImagePeersRequest>,
    ) -> Result<Response<ListImagePeersResponse>, Status> {
        let caller = peer_identity(&request).map(|i| i.node_id);
        let peers = image_peers(&self.store.read(), caller.as_deref());
        Ok(Response::new(ListImagePeersResponse { peers }))
    }
}

/// Interceptor for the node-to-node services: the caller must hold a certificate of this
/// cluster (TLS checked it against the cluster CA), of a node that was not removed.
#[derive(Clone)]
pub struct MembersOnly {
    store: Store,
}

impl MembersOnly {
    pub fn new(store: Store) -> MembersOnly {
        MembersOnly { store }
    }
}

impl tonic::service::Interceptor for MembersOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        crate::join::refuse_removed(&self.store, require_member(request)?)
    }
}

/// The certificate check of [`MembersOnly`], for a node without the store (a worker): a
/// cluster certificate, any role.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_member(request: Request<()>) -> Result<Request<()>, Status> {
    match peer_identity(&request) {
        Some(_) => Ok(request),
        None => Err(Status::unauthenticated(
            "a cluster certificate is required: only nodes of this cluster may fetch its images",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{Node, NodeDescription, NodeStatus};

    #[test]
    fn peers_address_fills_in_an_unspecified_host() {
        assert_eq!(
            peer_address("0.0.0.0:4242", "198.18.4.13").as_deref(),
            Some("198.18.4.13:4242")
        );
        assert_eq!(
            peer_address("[::]:4243", "fd00::7").as_deref(),
            Some("[fd00::7]:4243")
        );
        assert_eq!(
            peer_address("198.18.4.11:4242", "198.18.4.99").as_deref(),
            Some("198.18.4.11:4242"),
            "an advertised address is kept"
        );
        assert_eq!(
            peer_address("node3.example:4242", "10.0.0.3").as_deref(),
            Some("node3.example:4242")
        );
        // Loopback: fine on one host, useless from another.
        assert_eq!(
            peer_address("127.0.0.1:4300", "127.0.0.1").as_deref(),
            Some("127.0.0.1:4300")
        );
        assert_eq!(peer_address("127.0.0.1:4300", "10.0.0.3"), None);
        assert_eq!(peer_address("", "10.0.0.3"), None, "serves none");
        assert_eq!(peer_address("0.0.0.0:4242", ""), None, "no session address");
    }

    fn node(id: &str, state: NodeState, peer_addr: &str, ip: &str) -> Node {
        Node {
            id: id.into(),
            description: Some(NodeDescription {
                hostname: format!("host-{id}"),
                peer_addr: peer_addr.into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: state as i32,
                message: String::new(),
                addr: ip.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn peers_are_the_ready_serving_nodes_but_the_caller() {
        let mut state = State::default();
        for n in [
            node("a", NodeState::Ready, "10.0.0.1:4242", "10.0.0.1"),
            node("b", NodeState::Ready, "0.0.0.0:4242", "10.0.0.2"),
            node("c", NodeState::Down, "10.0.0.3:4242", "10.0.0.3"),
            node("d", NodeState::Ready, "", "10.0.0.4"),
            node("e", NodeState::Ready, "10.0.0.5:4242", "10.0.0.5"),
        ] {
            state.nodes.insert(n.id.clone(), n);
        }
        let listed = |caller| -> Vec<(String, String)> {
            image_peers(&state, caller)
                .into_iter()
                .map(|p| (p.node_id, p.addr))
                .collect()
        };
        assert_eq!(
            listed(Some("e")),
            vec![
                ("a".to_string(), "10.0.0.1:4242".to_string()),
                ("b".to_string(), "10.0.0.2:4242".to_string()),
            ]
        );
        assert_eq!(listed(None).len(), 3);
        assert_eq!(image_peers(&state, None)[0].hostname, "host-a");
    }
}
