//! One module per command family; each turns parsed arguments into API calls and output.

pub mod build;
pub mod compose;
pub mod container;
pub mod image;
pub mod network;
pub mod registry;
pub mod secret;
pub mod service;
pub mod stack;
pub mod system;
pub mod volume;
