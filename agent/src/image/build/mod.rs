//! `shoal build`: Dockerfile builds into the image store, with a layer cache.
//!
//! - [`dockerfile`]: the parser (pure).
//! - [`expand`]: Docker's variable substitution in Dockerfile words (pure).
//! - [`ignore`]: glob patterns and `.dockerignore` rules (pure).

pub mod dockerfile;
pub mod expand;
pub mod ignore;
