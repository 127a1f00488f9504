//! Reaching the daemon's API: a unix socket by default, or TCP.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use shoal_proto::builder_client::BuilderClient;
use shoal_proto::containers_client::ContainersClient;
use shoal_proto::control_client::ControlClient;
use shoal_proto::images_client::ImagesClient;
use shoal_proto::registry_client::RegistryClient;
use shoal_proto::secrets_client::SecretsClient;
use shoal_proto::volumes_client::VolumesClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// Clones share one connection.
#[derive(Clone)]
pub struct Client {
    pub control: ControlClient<Channel>,
    pub images: ImagesClient<Channel>,
    pub volumes: VolumesClient<Channel>,
    pub containers: ContainersClient<Channel>,
    pub secrets: SecretsClient<Channel>,
    pub registry: RegistryClient<Channel>,
    pub builder: BuilderClient<Channel>,
}

/// Connects to `host`: a path, `unix://PATH`, or `tcp://HOST:PORT`.
pub async fn connect(host: &str) -> Result<Client> {
    let channel = if let Some(addr) = host.strip_prefix("tcp://") {
        Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the shoal daemon at {host}: is it running?"))?
    } else {
        let path = PathBuf::from(host.strip_prefix("unix://").unwrap_or(host));
        let shown = path.display().to_string();
        // The URI is a placeholder: the connector below always dials the socket.
        Endpoint::from_static("http://shoal.sock")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| {
                format!(
                    "cannot reach the shoal daemon at {shown}: is `shoal daemon` running \
                     (and are you root)? Set --host or SHOAL_HOST for another socket"
                )
            })?
    };
    Ok(Client {
        control: ControlClient::new(channel.clone()),
        images: ImagesClient::new(channel.clone()),
        volumes: VolumesClient::new(channel.clone()),
        containers: ContainersClient::new(channel.clone()),
        secrets: SecretsClient::new(channel.clone()),
        registry: RegistryClient::new(channel.clone()),
        builder: BuilderClient::new(channel),
    })
}

/// The one-line message of an API error, without tonic's decoration.
pub fn status_message(status: &tonic::Status) -> String {
    if status.code() == tonic::Code::Unimplemented {
        return "this node is not a manager: run the command on a manager of the cluster".into();
    }
    if status.code() == tonic::Code::Unavailable && status.message().contains("transport") {
        return format!("the shoal daemon is unreachable: {}", status.message());
    }
    status.message().to_string()
}
