//! `shoal build`: Dockerfile builds into the node's image store, with a layer cache.
//!
//! # How a build flows
//! 1. The CLI reads the Dockerfile, filters the context directory with `.dockerignore`
//!    ([`context`], [`ignore`]) and streams both to the daemon's `Builder` service (`api.rs`,
//!    `proto/build.proto`). The context is unpacked with the store's safe unpacker (no path
//!    escapes, no device nodes) into the store's `tmp/`, and removed after the build.
//! 2. The Dockerfile is parsed ([`dockerfile`]); the target stage (`--target`, else the last)
//!    and the stages it needs are built in order (`builder.rs`).
//! 3. Each instruction is evaluated against its stage (`state.rs`: variable substitution,
//!    config changes), keyed for the cache (`cache.rs`), and, on a miss, carried out:
//!    metadata instructions only change the config; `COPY`/`ADD` write a layer tar from the
//!    context or another stage's/image's files (`copy.rs`, read through `rootfs.rs` without
//!    mounting); `RUN` runs in the node's container runtime and its overlay upper directory
//!    becomes a layer (`run.rs`, `layer.rs`). Layers go into the store like loaded ones
//!    (unpacked once; their tar kept as the blob, so `image save` and pushes work).
//! 4. The final config is registered with all its tags at once; progress streams back as
//!    BuildKit-like steps (`progress.rs`).
//!
//! # Choices
//! - An image that `FROM` or `COPY --from` names and the store lacks is pulled (as Docker
//!   does), anonymously, by the node's registry client when the daemon gave the builder one
//!   ([`ImageBuilder::with_registry`]); its progress is the step's log.
//! - `RUN` gets the node's default `bridge` network (NAT to the outside), the host's
//!   nameservers (loopback ones dropped), Docker's default capabilities and seccomp profile.
//! - The cache outlives daemon restarts and `image rm`; `image prune` drops the entries no
//!   image builds on (see `cache.rs`). `--no-cache` runs every step and refreshes the cache.
//! - Refused with a clear error: `ONBUILD`, heredocs, `RUN --mount/--network/--security`,
//!   `ADD` of URLs and of bzip2/xz archives, `--platform` other than the node's, remote contexts.
//!
//! # Modules
//! - [`dockerfile`]: the parser (pure).
//! - [`expand`]: Docker's variable substitution in Dockerfile words (pure).
//! - [`ignore`]: glob patterns and `.dockerignore` rules (pure).
//! - [`context`]: the client side: a context directory as a tar stream.
//! - `state`: what each instruction does to a stage's config and variables (pure).
//! - `rootfs`: a read-only merged view of an image's layers (no mounts).
//! - `copy`: `COPY`/`ADD` sources, their content digest, their layer.
//! - `layer`: layer tars, and the diff of a `RUN`'s overlay upper directory.
//! - `run`: `RUN` steps in the container runtime.
//! - `cache`: the build cache.
//! - `builder`, `api`, `progress`: the build itself, its gRPC service, its progress events.

mod api;
mod builder;
pub(crate) mod cache;
pub mod context;
pub(crate) mod copy;
pub mod dockerfile;
pub mod expand;
pub mod ignore;
pub(crate) mod layer;
pub(crate) mod progress;
pub(crate) mod rootfs;
pub(crate) mod run;
pub(crate) mod state;

pub use api::BuilderApi;
pub use builder::{BuildRequest, ImageBuilder};
pub use progress::Progress;
pub use run::Runner;

use crate::image::error::ImageError;

/// Why a build failed. Every message names the step (and the Dockerfile line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile is malformed, or an instruction cannot be carried out as written.
    #[error("{file} line {line}: {message}")]
    Dockerfile {
        file: String,
        line: usize,
        message: String,
    },
    /// Bad input: a missing stage, image or source file, a path outside the context, ...
    #[error("{0}")]
    Invalid(String),
    /// A `RUN` exited with a non-zero code (or could not start).
    #[error("{step} failed: {message}")]
    RunFailed {
        step: String,
        code: i32,
        message: String,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the build was cancelled: the client went away")]
    Cancelled,
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
mod tests;
