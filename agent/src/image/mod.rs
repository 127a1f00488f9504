//! The node's local image store, with OCI semantics.
//!
//! Images come from `docker import`-style rootfs tarballs ([`ImageStore::import_tar`]), from the
//! host's busybox-static ([`ImageStore::bootstrap_busybox`]), or from image archives
//! ([`ImageStore::load`]: `docker save` output, old and Docker 25+ forms, and OCI image-layout
//! archives; see `archive.rs`), and go out as `docker save` archives ([`ImageStore::save`]).
//! The names are the OCI ones: layers are known by their diff id (sha256 of the uncompressed
//! tar), images by the sha256 of their OCI config (the image id), manifests by their digest;
//! tags are kept apart from all three.
//!
//! # On disk (`root`, e.g. `/var/lib/shoal/images`)
//!
//! ```text
//! layers/<short>/        an unpacked layer, ready to be an overlay lowerdir (whiteouts as 0:0
//!                        char devices, opaque dirs with trusted.overlay.opaque=y)
//! layers/<short>.json    {"digest": "sha256:<diff id>", "size": .., "created": ..,
//!                         "blob": "sha256:<hex>", "blob_size": ..}
//! blobs/sha256/<hex>     content-addressed blobs: layers as they came (plain, gzip or zstd),
//!                        and OCI manifests
//! images/<64 hex>.json   the OCI image config; its sha256 is the image id
//! tags.json              {"tags": {"busybox:latest": "sha256:<id>", ..},
//!                         "manifests": {"sha256:<id>": "sha256:<manifest digest>", ..}}
//! tmp/                   imports and loads in progress, layers being deleted (emptied at open)
//! ```
//!
//! `<short>` is the first 12 hex digits of the layer digest (16, 20, … on a collision):
//! overlay's `lowerdir=` option is limited to a page, so layer paths are kept short. Stores
//! written by earlier versions (no `blobs/`, no `blob` in layer records, no `manifests`) open
//! as they are; their images work, and only `save` asks for such an image to be imported again
//! (the original layer bytes, which the config's diff ids name, were not kept).
//!
//! # Guarantees
//!
//! - An import or load unpacks into `tmp/`, then renames into `layers/`; a failure at any step
//!   leaves no image or tag behind (layers it placed are garbage-collected at once). A load
//!   registers all of its images at once, under the store's lock. Metadata is written
//!   atomically (temporary file, fsync, rename, fsync of the directory). A loaded or pulled
//!   layer is placed unsynced (its large files already on their way to disk); before an image
//!   or a build cache entry names it, one `syncfs` makes it durable with its blob. A crash
//!   before that leaves layers nothing names, which recovery removes.
//! - Each layer is unpacked once and shared by every image that has it; two loads of the same
//!   layer wait for each other (a per-layer lock) instead of unpacking it twice, and a load's
//!   layers are pinned against garbage collection until its images are registered.
//! - Every blob's digest is verified while it streams in; every layer's diff id is checked
//!   against the image config.
//! - Unpacking is safe against hostile tarballs (path traversal, symlink and hardlink escapes,
//!   device nodes, decompression bombs): the rules are in `unpack.rs`, the bounds in
//!   [`ImportLimits`].
//! - Garbage collection (after `rm`, `prune`, a failed load, and at open) deletes the layers no
//!   image uses and the blobs no layer or manifest names.
//! - After a crash, [`ImageStore::open`] removes what was left half done.
//!
//! # Choices (Docker's behaviour where it has one)
//!
//! - References are normalised as Docker does (`nginx` = `docker.io/library/nginx:latest`);
//!   tags are stored and shown in Docker's short form (`nginx:latest`). `name@sha256:…`
//!   resolves by the image's manifest digest or config digest (the image must be tagged in
//!   `name`'s repository, unless it has no tag at all).
//! - Importing or loading onto an existing tag moves the tag; the old image stays, untagged
//!   (`<none>` in Docker), until removed by id or pruned.
//! - Removing by tag untags, and deletes the image once no tag is left; removing by id is
//!   refused while two or more tags name the image (unless forced).
//! - An image a container uses (matched by its layer directories; see [`ContainerUse`]) is
//!   never deleted: `rm` is refused (running container: even forced; stopped one: `-f` untags
//!   and keeps the image, as Docker does), and `prune` skips it.
//! - An id prefix needs `sha256:` or at least 4 hex digits; a name is tried as a tag first.
//! - `save` writes Docker 25+'s layout (`manifest.json` plus the OCI `index.json` and
//!   `oci-layout`), with each layer blob as stored: `docker load` reads it, old and new.

mod api;
mod archive;
pub mod build;
mod busybox;
mod config;
mod error;
mod fsutil;
pub mod peer;
mod reference;
pub mod registry;
mod store;
mod unpack;

pub use api::ImagesApi;
pub use error::ImageError;
pub use reference::{Reference, DEFAULT_TAG};
pub use store::{ContainerUse, ImageStore, RemoveReport, ResolvedImage};
pub use unpack::ImportLimits;

#[cfg(test)]
mod tests;
