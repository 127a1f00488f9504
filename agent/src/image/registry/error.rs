//! What can go wrong talking to a registry. Every message names the registry or the image, and
//! says what to do; the gRPC layer maps the variants to status codes.

use super::super::error::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The local store refused (a bad reference, a missing image to push, disk trouble...).
    #[error(transparent)]
    Image(#[from] ImageError),

    /// The registry wants credentials and none were given.
    #[error(
        "registry {registry} requires authentication for {what}: log in first with `shoal login \
         {login}` (pull access denied, or the repository does not exist)"
    )]
    AuthRequired {
        registry: String,
        what: String,
        login: String,
    },

    /// The credentials given were refused.
    #[error(
        "registry {registry} refused the credentials of `{user}` for {what}: {detail}; check the \
         user name and password (`shoal login {login}`)"
    )]
    AuthDenied {
        registry: String,
        user: String,
        what: String,
        detail: String,
        login: String,
    },

    /// No such repository, tag or digest in the registry.
    #[error("{what} not found in registry {registry}: check the name and the tag ({detail})")]
    NotFound {
        registry: String,
        what: String,
        detail: String,
    },

    /// A blob or manifest whose bytes do not hash to the digest that names it.
    #[error(
        "{what} does not match its digest: expected {expected}, got {actual} (a corrupted, \
         truncated or tampered download); nothing was stored"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A blob shorter or longer than its descriptor says.
    #[error(
        "{what} is {actual} bytes but its descriptor says {expected} (truncated or tampered); \
         nothing was stored"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    /// A manifest of a kind shoal does not handle.
    #[error(
        "{what} has media type `{media_type}`, which shoal cannot pull: only Docker v2 schema 2 \
         and OCI image manifests, Docker manifest lists and OCI image indexes are supported"
    )]
    UnsupportedManifest { what: String, media_type: String },

    /// A manifest, index or config that does not parse or is inconsistent.
    #[error("invalid {what}: {detail}")]
    BadManifest { what: String, detail: String },

    /// The registry could not be reached (connection, TLS, timeout).
    #[error("cannot reach registry {registry}: {detail}{hint}")]
    Unreachable {
        registry: String,
        detail: String,
        hint: String,
    },

    /// Another node of the cluster failed to send an image's blob (see `image/peer`).
    #[error("{what} failed: {detail}")]
    Transfer { what: String, detail: String },

    /// Anything else the registry answered that makes no sense.
    #[error("registry {registry} failed {what}: {detail}")]
    Protocol {
        registry: String,
        what: String,
        detail: String,
    },
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            RegistryError::Image(inner) => tonic::Status::from(inner),
            RegistryError::AuthRequired { .. } => tonic::Status::unauthenticated(msg),
            RegistryError::AuthDenied { .. } => tonic::Status::permission_denied(msg),
            RegistryError::NotFound { .. } => tonic::Status::not_found(msg),
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::UnsupportedManifest { .. }
            | RegistryError::BadManifest { .. } => tonic::Status::invalid_argument(msg),
            RegistryError::Unreachable { .. } | RegistryError::Transfer { .. } => {
                tonic::Status::unavailable(msg)
            }
            RegistryError::Protocol { .. } => tonic::Status::internal(msg),
        }
    }
}
