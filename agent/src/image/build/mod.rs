//! `shoal build`: Dockerfile builds into the image store, with a layer cache.
//!
//! - [`dockerfile`]: the parser (pure).
//! - [`expand`]: Docker's variable substitution in Dockerfile words (pure).
//! - [`ignore`]: glob patterns and `.dockerignore` rules (pure).
//! - `state`: what each instruction does to a stage's config and variables (pure).
//! - `rootfs`: a read-only merged view of an image's layers (no mounts).
//! - `layer`: layer tars, and the diff of a `RUN`'s overlay upper directory.

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
