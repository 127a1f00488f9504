//! The one error type of the image store. Every message says what went wrong, where, and what
//! to do about it; the gRPC layer maps the variants to status codes (see `api.rs`).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference (name, name:tag, image id or id prefix) that cannot be parsed.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected, and what a valid one looks like.
        reason: String,
    },

    /// No tag or image id matches the reference.
    #[error(
        "no such image `{reference}` in the local image store at {root}: import it or bootstrap \
         busybox first, and check the name with the image list"
    )]
    NotFound {
        /// The reference as given.
        reference: String,
        /// The store's directory.
        root: PathBuf,
    },

    /// An id prefix that matches more than one image.
    #[error(
        "image id prefix `{prefix}` is ambiguous: it matches {}; give more characters of the id",
        candidates.join(", ")
    )]
    Ambiguous {
        /// The prefix as given.
        prefix: String,
        /// Every image id it matches.
        candidates: Vec<String>,
    },

    /// Removing an image by id while several tags still name it (Docker refuses this too).
    #[error(
        "cannot remove image {id} by id: it is tagged {}; remove it by tag instead (each tag, \
         one by one)",
        tags.join(", ")
    )]
    Conflict {
        /// The image id.
        id: String,
        /// The tags that still point at it.
        tags: Vec<String>,
    },

    /// An image (in use by a container) that cannot be removed.
    #[error("cannot remove image `{reference}`: {detail}")]
    InUse {
        /// The reference as given.
        reference: String,
        /// Which container uses it, and what to do.
        detail: String,
    },

    /// An image archive (`docker save` or OCI layout) that is malformed, inconsistent or
    /// tampered with.
    #[error("invalid image archive: {detail}; nothing was loaded")]
    InvalidArchive {
        /// What is wrong, and where.
        detail: String,
    },

    /// The input is empty.
    #[error("the image tarball is empty: give a tar archive of a root filesystem (plain or gzip)")]
    EmptyInput,

    /// The input is compressed with something other than gzip.
    #[error(
        "the image tarball is compressed with {format}, which is not supported: give a plain, \
         gzip- or zstd-compressed tar archive"
    )]
    UnsupportedCompression {
        /// The detected format.
        format: &'static str,
    },

    /// The input is not a well-formed tar archive (or a corrupt gzip stream).
    #[error(
        "the image tarball is not a valid tar archive (plain, gzip or zstd){}: {detail}; \
         nothing was imported",
        match entry { Some(e) => format!(" at or after entry `{e}`"), None => String::new() }
    )]
    BadArchive {
        /// The last entry read before the problem, if any.
        entry: Option<String>,
        /// What the tar or gzip reader reported.
        detail: String,
    },

    /// An entry that would escape the layer or is not allowed in an image.
    #[error(
        "refusing tar entry `{entry}`: {reason}; the tarball may be malicious, and nothing was \
         imported"
    )]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The archive is bigger than the configured import limits (a decompression bomb, perhaps).
    #[error(
        "the image tarball exceeds the import limit of {limit} {what}; it may be a decompression \
         bomb. Nothing was imported; raise `ImportLimits` if the image is genuine"
    )]
    LimitExceeded {
        /// Which limit (e.g. "uncompressed bytes", "entries").
        what: &'static str,
        /// The configured limit.
        limit: u64,
    },

    /// Writing an entry to disk failed.
    #[error("cannot unpack tar entry `{entry}` into {dir}: {source}; nothing was imported")]
    Unpack {
        /// The entry's path in the archive.
        entry: String,
        /// The layer directory being written.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// busybox-static is not installed on the host.
    #[error("busybox-static is not installed: run `apt-get install busybox-static` (looked for {})",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    BusyboxMissing {
        /// The paths that were tried.
        looked: Vec<PathBuf>,
    },

    /// The host's busybox cannot serve as an image (dynamically linked, not runnable, ...).
    #[error("{path} cannot be used to bootstrap the busybox image: {reason}")]
    BusyboxUnusable {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },

    /// The store's own files are damaged or inconsistent.
    #[error("the image store is damaged at {path}: {detail}")]
    Corrupt {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong, and what to do.
        detail: String,
    },

    /// Any other file system error, with the operation and the path.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What the store was doing ("create directory", "write", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// Builds an [`ImageError::Io`]; for `map_err` chains.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
