//! A task's image the node lacks, fetched as the task's preparing step: from the other nodes
//! first (an image built, loaded or pulled on any node runs on every node; see `image/peer`),
//! else from its registry.

use crate::image::peer::PeerImages;
use crate::image::registry::Registry;

/// What a fetch brought: the image id, or (pulled from a registry) nothing more than that the
/// reference resolves now.
pub(super) enum Fetched {
    Image(String),
    Pulled,
}

/// Fetches `reference` (a service's image, pinned: see [`crate::image::peer::pinned_reference`]).
/// The error says what each source answered.
pub(super) async fn fetch_missing(
    reference: &str,
    peers: Option<&PeerImages>,
    registry: Option<&Registry>,
) -> Result<Fetched, String> {
    let mut reasons = Vec::new();
    if let Some(peers) = peers {
        match peers.fetch(reference).await {
            Ok(Some(image)) => return Ok(Fetched::Image(image.id)),
            Ok(None) => reasons.push(format!("no other node has image {reference}")),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if let Some(registry) = registry {
        match registry.ensure(reference).await {
            Ok(_) => return Ok(Fetched::Pulled),
            Err(e) => reasons.push(format!("cannot pull image {reference}: {e}")),
        }
    }
    Err(reasons.join("; "))
}
