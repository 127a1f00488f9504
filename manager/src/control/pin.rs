//! Pinning: a service names its image by tag, and the manager records the digest of the image
//! that tag names at deploy (`ContainerSpec.image_digest`), so that every node runs the same
//! bytes, whatever the tag names on it, or later. A spec that keeps its image keeps its pin: a
//! scale, an environment change or a rollback runs the bytes it ran before; a new image name
//! (or a deploy, which re-reads the compose file) pins anew, so a rebuilt image rolls out.

use shoal_proto::ContainerSpec;

/// Whether `new` must be pinned: a new service (`current` is None), an image name that
/// changed, or no pin yet.
pub fn needs_pin(current: Option<&ContainerSpec>, new: &ContainerSpec) -> bool {
    match current {
        None => true,
        Some(current) => new.image_digest.is_empty() || current.image != new.image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, digest: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.into(),
            image_digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pin_is_kept_while_the_image_name_is() {
        let pinned = spec("app:v1", "sha256:aa");
        // A new service or stack service: always pinned by the manager, whatever it was sent.
        assert!(needs_pin(None, &spec("app:v1", "")));
        assert!(needs_pin(None, &spec("app:v1", "sha256:bb")));
        // An update that keeps image and pin (env, scale, rollback): the same bytes.
        let mut env_change = pinned.clone();
        env_change.env.push("A=1".into());
        assert!(!needs_pin(Some(&pinned), &env_change));
        // A new image name, or a pin dropped by the client: pinned anew.
        assert!(needs_pin(Some(&pinned), &spec("app:v2", "sha256:aa")));
        assert!(needs_pin(Some(&pinned), &spec("app:v1", "")));
    }
}
