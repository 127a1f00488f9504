//! Raft between managers over tonic: each RPC carries openraft's own request and response,
//! postcard-encoded, in a `RaftMessage`. A response is `Result<T, openraft RaftError>`, so a
//! peer's refusal reaches openraft as the typed error it expects.
//!
//! A daemon's [`NetworkFactory`] speaks mutual TLS with its manager certificate
//! ([`NetworkFactory::with_tls`]); the in-process tests use plain HTTP/2. The same channels
//! carry the manager-to-manager `Managers` calls (see [`crate::membership`]).

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError as OpenRaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::RaftMessage;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{codec, Raft, TypeConfig, MAX_MESSAGE};

/// How long to wait for a TCP connection to a peer: a live peer on a LAN answers in
/// milliseconds, and a dead one should be reported quickly so openraft backs off.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The server side: peers' Raft RPCs into the local openraft.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode_request<T: DeserializeOwned>(message: RaftMessage) -> Result<T, Status> {
    codec::decode(&message.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode_response<T: Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, Status> {
    let data = codec::encode(value)
        .map_err(|e| Status::internal(format!("cannot encode the raft response: {e}")))?;
    Ok(tonic::Response::new(RaftMessage { data }))
}

#[tonic::async_trait]
impl shoal_proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request.into_inner())?;
        encode_response(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = decode_request(request.into_inner())?;
        encode_response(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request.into_inner())?;
        encode_response(&self.raft.install_snapshot(rpc).await)
    }
}

/// Makes a client per peer. Channels are cached per address: one HTTP/2 connection per peer,
/// shared by replication and elections, re-established by tonic when it breaks.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Arc<Mutex<Option<ClientTlsConfig>>>,
}

impl NetworkFactory {
    /// Plain HTTP/2 (tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// Mutual TLS: `tls` carries this manager's certificate and the cluster CA.
    pub fn with_tls(tls: ClientTlsConfig) -> Self {
        let network = NetworkFactory::default();
        network.set_tls(tls);
        network
    }

    /// Switches to mutual TLS (a first manager gets its certificate only once its cluster
    /// exists); channels made before are dropped.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls);
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The shared channel to the manager at `addr` (created lazily, reconnects by itself).
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let tls = self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS settings for {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerNetwork {
        let client = self.channel(&node.addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        });
        PeerNetwork {
            target,
            node: node.clone(),
            client,
        }
    }
}

/// The client side towards one peer.
pub struct PeerNetwork {
    target: u64,
    node: BasicNode,
    /// An address that cannot even be parsed is reported on every call.
    client: Result<RaftClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AddressError(String);

/// A failure before any answer from the peer's openraft.
enum Transport {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl Transport {
    fn from_status(status: &Status) -> Transport {
        match status.code() {
            // Connection refused, reset or timed out, no route: back off, don't hammer it.
            Code::Unavailable => Transport::Unreachable(Unreachable::new(status)),
            _ => Transport::Network(NetworkError::new(status)),
        }
    }

    fn into_rpc<E: Error>(self) -> RPCError<u64, BasicNode, E> {
        match self {
            Transport::Unreachable(e) => RPCError::Unreachable(e),
            Transport::Network(e) => RPCError::Network(e),
        }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, OpenRaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&AddressError(
                    e.clone(),
                ))))
            }
        };
        let data = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { data });
        message.set_timeout(option.hard_ttl());
        let answer = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let answer = answer.map_err(|status| Transport::from_status(&status).into_rpc())?;
        let result: Result<Resp, OpenRaftError<u64, E>> = codec::decode(&answer.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, OpenRaftError<u64>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, OpenRaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, OpenRaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
