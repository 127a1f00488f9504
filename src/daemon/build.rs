//! The node's Dockerfile builder: its own container runtime for `RUN` steps (state under
//! `<data dir>/build`, so build containers never mix with the node's containers), the node's
//! networks for their outbound traffic, and the image store the results go to.

use std::sync::Arc;

use anyhow::{Context, Result};
use shoal_agent::image::build::{BuilderApi, ImageBuilder, Runner};
use shoal_agent::image::ImageStore;
use shoal_agent::network::NetworkManager;
use shoal_agent::runtime::Runtime;

use crate::cli::DaemonArgs;

/// Opens the builder, and removes in the background the build containers a previous daemon
/// left behind.
pub(super) fn open(
    args: &DaemonArgs,
    images: &ImageStore,
    network: &NetworkManager,
) -> Result<ImageBuilder> {
    let runtime = Arc::new(Runtime::new(
        args.data_dir.join("build"),
        std::env::current_exe().context("cannot find the shoal binary to run build steps")?,
        args.cgroup_parent.clone(),
    )?);
    let runner = Runner::new(runtime, Some(network.clone()));
    let leftovers = runner.clone();
    tokio::spawn(async move { leftovers.clean_leftovers().await });
    ImageBuilder::new(images.clone(), Some(runner)).context("cannot open the build cache")
}

/// The gRPC service.
pub(super) fn service(
    builder: &ImageBuilder,
) -> shoal_proto::builder_server::BuilderServer<BuilderApi> {
    BuilderApi::new(builder.clone()).into_server()
}
