//! What a peer says it has, checked before anything is fetched: its manifest and config must
//! hash to the digests that name them, and be the image the reference asks for. Pure: no I/O.

use sha2::{Digest, Sha256};

use super::super::config::OciImageConfig;
use super::super::reference::Reference;
use super::super::registry::manifest::{self, ImageManifest, Manifest};
use super::super::registry::pull::parse_config;
use super::super::registry::RegistryError;

/// What a reference lets the fetching node check a peer's answer against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// `name[:tag]`: whatever the peer has under that name (nothing to check it against but
    /// the digests within).
    Named(Reference),
    /// `name[:tag]@sha256:…`: that manifest (or config) digest exactly.
    Digest(Reference, String),
    /// An image id, or a prefix of one (hex digits).
    Id(String),
}

impl Wanted {
    /// Parses what a task or a user names an image by.
    pub fn of(reference: &str) -> Result<Wanted, RegistryError> {
        let bare = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex = !bare.is_empty()
            && bare.len() <= 64
            && bare.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if reference.starts_with("sha256:") || (is_hex && bare.len() == 64) {
            if !is_hex {
                return Err(RegistryError::BadManifest {
                    what: format!("image reference {reference}"),
                    detail: "an image id is sha256: and lowercase hex digits".into(),
                });
            }
            return Ok(Wanted::Id(bare.to_string()));
        }
        let parsed = Reference::parse_any(reference)?;
        Ok(match parsed.digest.clone() {
            Some(d) => Wanted::Digest(parsed, d),
            None => Wanted::Named(parsed),
        })
    }

    /// The name the fetched image is tagged with (when that tag is free on this node).
    pub fn tag(&self) -> Option<Reference> {
        match self {
            Wanted::Named(r) | Wanted::Digest(r, _) if !r.tag.is_empty() => Some(Reference {
                digest: None,
                ..r.clone()
            }),
            _ => None,
        }
    }
}

/// A peer's image, checked.
#[derive(Clone, Debug)]
pub struct Described {
    pub manifest_bytes: Vec<u8>,
    /// sha256 of `manifest_bytes`.
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    pub config: OciImageConfig,
    /// sha256 of `config_bytes`: the image id.
    pub id: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks a peer's answer (`what` names the peer in errors): the manifest is an image
/// manifest, within bounds; the config is the blob the manifest names (digest and size) and a
/// valid config with one diff id per layer; and the image is the one `wanted` pins.
pub fn check(
    wanted: &Wanted,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    what: &str,
) -> Result<Described, RegistryError> {
    for (name, len) in [
        ("manifest", manifest_bytes.len()),
        ("config", config_bytes.len()),
    ] {
        if len > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::BadManifest {
                what: format!("{name} from {what}"),
                detail: format!(
                    "it is {len} bytes, over the {} byte bound",
                    manifest::MAX_MANIFEST_BYTES
                ),
            });
        }
    }
    let manifest_what = format!("manifest from {what}");
    let manifest = match manifest::parse(&manifest_bytes, "", &manifest_what)? {
        Manifest::Image(m) => m,
        Manifest::Index(_) => {
            return Err(RegistryError::BadManifest {
                what: manifest_what,
                detail: "an index, where a node serves an image manifest".into(),
            })
        }
    };
    let manifest_digest = sha256(&manifest_bytes);
    let id = sha256(&config_bytes);
    let config_what = format!("image config {} from {what}", manifest.config.digest);
    if id != manifest.config.digest {
        return Err(RegistryError::DigestMismatch {
            what: config_what,
            expected: manifest.config.digest.clone(),
            actual: id,
        });
    }
    if config_bytes.len() as i64 != manifest.config.size {
        return Err(RegistryError::SizeMismatch {
            what: config_what,
            expected: manifest.config.size.max(0) as u64,
            actual: config_bytes.len() as u64,
        });
    }
    match wanted {
        Wanted::Digest(r, d) if *d != manifest_digest && *d != id => {
            return Err(RegistryError::DigestMismatch {
                what: format!("image {r} from {what}"),
                expected: d.clone(),
                actual: manifest_digest,
            });
        }
        Wanted::Id(prefix) if !id["sha256:".len()..].starts_with(prefix.as_str()) => {
            return Err(RegistryError::DigestMismatch {
                what: format!("image sha256:{prefix} from {what}"),
                expected: format!("sha256:{prefix}…"),
                actual: id,
            });
        }
        _ => {}
    }
    let config = parse_config(&config_bytes, &manifest, &config_what)?;
    Ok(Described {
        manifest_bytes,
        manifest_digest,
        manifest,
        config_bytes,
        config,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    /// A one-layer image: (manifest, config).
    fn image(layer_digest: &str, diff_id: &str) -> (Vec<u8>, Vec<u8>) {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {"Cmd": ["sh"]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": 10}],
        })
        .to_string()
        .into_bytes();
        (manifest, config)
    }

    fn good() -> (Vec<u8>, Vec<u8>) {
        image(
            &format!("sha256:{}", hex_of('a')),
            &format!("sha256:{}", hex_of('b')),
        )
    }

    #[test]
    fn peer_wanted_parses_names_digests_and_ids() {
        let d = format!("sha256:{}", hex_of('c'));
        assert!(matches!(Wanted::of("app:v1"), Ok(Wanted::Named(r)) if r.tag == "v1"));
        match Wanted::of(&format!("app:v1@{d}")).expect("pinned") {
            Wanted::Digest(r, digest) => {
                assert_eq!(digest, d);
                assert_eq!(
                    Wanted::Digest(r, digest).tag().map(|t| t.to_string()),
                    Some("app:v1".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Wanted::of(&format!("app@{d}")).expect("digest").tag(),
            None,
            "no tag to give"
        );
        assert_eq!(
            Wanted::of(&d).expect("id"),
            Wanted::Id(hex_of('c')),
            "a full id"
        );
        assert_eq!(
            Wanted::of("sha256:abcd").expect("id"),
            Wanted::Id("abcd".into())
        );
        assert!(Wanted::of("sha256:XYZ").is_err());
        assert!(Wanted::of("Bad Name").is_err());
    }

    #[test]
    fn peer_answer_that_matches_passes() {
        let (m, c) = good();
        let described = check(
            &Wanted::of("app:v1").expect("w"),
            m.clone(),
            c.clone(),
            "peer",
        )
        .expect("valid");
        assert_eq!(described.manifest_digest, sha256(&m));
        assert_eq!(described.id, sha256(&c));
        assert_eq!(described.manifest.layers.len(), 1);
        // Pinned by manifest digest, by config digest, and by id prefix.
        for pin in [
            format!("app:v1@{}", sha256(&m)),
            format!("app@{}", sha256(&c)),
            sha256(&c)[..20].to_string(),
            sha256(&c),
        ] {
            let wanted = Wanted::of(&pin).expect("w");
            check(&wanted, m.clone(), c.clone(), "peer").unwrap_or_else(|e| panic!("{pin}: {e}"));
        }
    }

    #[test]
    fn peer_answer_for_another_pin_is_refused() {
        let (m, c) = good();
        let other = format!("sha256:{}", hex_of('e'));
        let err = check(
            &Wanted::of(&format!("app:v1@{other}")).expect("w"),
            m.clone(),
            c.clone(),
            "node n1 (10.0.0.1:4242)",
        )
        .expect_err("not the pinned image");
        let text = err.to_string();
        assert!(text.contains(&other) && text.contains("node n1"), "{text}");
        let err = check(&Wanted::Id("ffff".into()), m, c, "peer").expect_err("other id");
        assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn peer_answer_with_a_config_the_manifest_does_not_name_is_refused() {
        let (m, mut c) = good();
        c.push(b' ');
        let err = check(&Wanted::of("app").expect("w"), m, c, "node n2").expect_err("config");
        let text = err.to_string();
        assert!(
            text.contains("image config") && text.contains("node n2") && text.contains("digest"),
            "{text}"
        );
    }

    #[test]
    fn peer_answer_that_is_no_image_manifest_is_refused() {
        let (_, c) = good();
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        })
        .to_string()
        .into_bytes();
        assert!(check(&Wanted::of("app").expect("w"), index, c.clone(), "p").is_err());
        assert!(check(&Wanted::of("app").expect("w"), b"{".to_vec(), c, "p").is_err());
        // A config whose diff ids do not match the manifest's layers.
        let (m, c) = image(&format!("sha256:{}", hex_of('a')), "sha256:short");
        assert!(check(&Wanted::of("app").expect("w"), m, c, "p").is_err());
    }
}
