//! The node's local image store.
//!
//! A first, minimal version of what will become a full OCI content store: images come from
//! `docker import`-style rootfs tarballs ([`ImageStore::import_tar`]) or from the host's
//! busybox-static ([`ImageStore::bootstrap_busybox`]); each is one layer. The names are already
//! the OCI ones, so a registry client can be added without moving anything: layers are known by
//! their diff id (sha256 of the uncompressed tar), images by the sha256 of their OCI config, and
//! tags are kept apart from both.
//!
//! # On disk (`root`, e.g. `/var/lib/shoal/images`)
//!
//! ```text
//! layers/<short>/        an unpacked layer, ready to be an overlay lowerdir
//! layers/<short>.json    {"digest": "sha256:<64 hex>", "size": .., "created": ..}
//! images/<64 hex>.json   the OCI image config; its sha256 is the image id
//! tags.json              {"tags": {"busybox:latest": "sha256:<64 hex>", ..}}
//! tmp/                   imports in progress, layers being deleted (emptied at open)
//! ```
//!
//! `<short>` is the first 12 hex digits of the layer digest (16, 20, … on a collision):
//! overlay's `lowerdir=` option is limited to a page, so layer paths are kept short.
//!
//! # Guarantees
//!
//! - An import unpacks into `tmp/`, then renames into `layers/`; a failure at any step leaves
//!   no layer, image or tag behind. Metadata is written atomically (temporary file, fsync,
//!   rename, fsync of the directory); the layer's files are flushed with one `syncfs`.
//! - Each layer is unpacked once and shared by every image that has it.
//! - Unpacking is safe against hostile tarballs (path traversal, symlink and hardlink escapes,
//!   device nodes, decompression bombs): the rules are in `unpack.rs`, the bounds in
//!   [`ImportLimits`].
//! - After a crash, [`ImageStore::open`] removes what was left half done.
//!
//! # Choices (Docker's behaviour where it has one)
//!
//! - `name` means `name:latest`; names follow Docker's grammar (lowercase, `/`-separated
//!   components, optional `registry:port/`); `name@digest` is refused for now.
//! - Importing onto an existing tag moves the tag; the old image stays, untagged (`<none>` in
//!   Docker), until removed by id or [`ImageStore::prune_dangling`].
//! - Removing by tag untags, and deletes the image once no tag is left; removing by id is
//!   refused while two or more tags name the image.
//! - An id prefix needs `sha256:` or at least 4 hex digits; a name is tried as a tag first.
//! - The store does not yet know which containers use an image: removing an image a running
//!   container was started from deletes its layers (a later issue adds references).

mod api;
mod busybox;
mod config;
mod error;
mod fsutil;
mod reference;
mod store;
mod unpack;

pub use api::ImagesApi;
pub use error::ImageError;
pub use reference::{Reference, DEFAULT_TAG};
pub use store::{ImageStore, ResolvedImage};
pub use unpack::ImportLimits;

#[cfg(test)]
mod tests;
