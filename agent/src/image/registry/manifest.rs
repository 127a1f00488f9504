//! Manifests as registries serve them: Docker's v2 schema 2 and OCI image manifests, Docker
//! manifest lists and OCI image indexes (multi-arch), told apart by media type; the platform
//! an index offers for this node picked as Docker does. Pure logic over bytes.

use serde::Deserialize;

use super::error::RegistryError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What the `Accept` header of a manifest request lists: every kind handled here.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Manifests (and image configs) bigger than this are refused.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A content descriptor (OCI and Docker spell it the same way).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest: a config and layers, lowest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    /// The images of a multi-arch index.
    Index(Vec<Descriptor>),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Parses a manifest; `content_type` is the response's Content-Type (used when the document
/// names no media type, as OCI allows). `what` names it in errors.
pub fn parse(bytes: &[u8], content_type: &str, what: &str) -> Result<Manifest, RegistryError> {
    let bad = |detail: String| RegistryError::BadManifest {
        what: what.to_string(),
        detail,
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "it is {} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
            bytes.len()
        )));
    }
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    let media = raw
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| content_type.to_string());
    if raw.schema_version == 1 || media == DOCKER_SCHEMA1 || media == DOCKER_SCHEMA1_SIGNED {
        return Err(RegistryError::UnsupportedManifest {
            what: what.to_string(),
            media_type: "Docker image manifest v2 schema 1 (deprecated)".into(),
        });
    }
    if raw.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion is {}, not 2",
            raw.schema_version
        )));
    }
    let is_index = match media.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // OCI lets a document leave its media type out: go by its shape.
        "" | "application/json" => raw.manifests.is_some() && raw.config.is_none(),
        other => {
            return Err(RegistryError::UnsupportedManifest {
                what: what.to_string(),
                media_type: other.to_string(),
            })
        }
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| bad("the index has no `manifests`".into()))?;
        for d in &manifests {
            check_digest(&d.digest).map_err(&bad)?;
        }
        return Ok(Manifest::Index(manifests));
    }
    let config = raw
        .config
        .ok_or_else(|| bad("the manifest has no `config`".into()))?;
    check_digest(&config.digest).map_err(&bad)?;
    let layers = raw.layers.unwrap_or_default();
    for l in &layers {
        check_digest(&l.digest).map_err(&bad)?;
        if l.size < 0 {
            return Err(bad(format!("layer {} has a negative size", l.digest)));
        }
        if !is_layer_media_type(&l.media_type) {
            return Err(bad(format!(
                "layer {} has media type `{}`, which is not an image layer shoal can unpack",
                l.digest, l.media_type
            )));
        }
    }
    Ok(Manifest::Image(ImageManifest {
        media_type: if media.is_empty() {
            OCI_MANIFEST.into()
        } else {
            media
        },
        config,
        layers,
    }))
}

/// Tar layers, plain, gzip or zstd, in OCI's or Docker's spelling (not Windows' foreign ones).
fn is_layer_media_type(media: &str) -> bool {
    matches!(
        media,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

fn check_digest(digest: &str) -> Result<(), String> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest `{digest}` is not sha256:<64 lowercase hex digits> (the only algorithm \
             shoal verifies)"
        ))
    }
}

/// The image of an index for `os`/`architecture` (Docker's choice: the first exact match, a
/// `v8` variant preferred on arm64; attestation manifests never). The error lists what the
/// index offers.
pub fn select_platform<'a>(
    manifests: &'a [Descriptor],
    os: &str,
    architecture: &str,
) -> Result<&'a Descriptor, String> {
    let candidates = || {
        manifests.iter().filter(|d| {
            d.annotations
                .get("vnd.docker.reference.type")
                .is_none_or(|t| t != "attestation-manifest")
        })
    };
    let matching: Vec<&Descriptor> = candidates()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == architecture)
        })
        .collect();
    if let Some(best) = matching
        .iter()
        .find(|d| {
            architecture != "arm64"
                || d.platform.as_ref().and_then(|p| p.variant.as_deref()) == Some("v8")
        })
        .or(matching.first())
    {
        return Ok(best);
    }
    let offered: Vec<String> = candidates()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(format!(
        "no image for {os}/{architecture} in the index (it has: {})",
        if offered.is_empty() {
            "no platform information".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn index_json(entries: &[(&str, &str, Option<&str>, char)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, variant, c)| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d(*c), "size": 10, "platform": p})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
        }))
        .expect("json")
    }

    #[test]
    fn registry_index_selects_linux_amd64() {
        let bytes = index_json(&[
            ("linux", "arm", Some("v7"), 'a'),
            ("linux", "arm64", Some("v8"), 'b'),
            ("windows", "amd64", None, 'c'),
            ("linux", "amd64", None, 'd'),
            ("linux", "amd64", None, 'e'),
        ]);
        let Manifest::Index(list) = parse(&bytes, "", "index").expect("parse") else {
            panic!("not an index");
        };
        assert_eq!(
            select_platform(&list, "linux", "amd64")
                .expect("amd64")
                .digest,
            d('d')
        );
        assert_eq!(
            select_platform(&list, "linux", "arm64")
                .expect("arm64")
                .digest,
            d('b')
        );
        let err = select_platform(&list, "linux", "s390x").expect_err("none");
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm/v7, linux/arm64/v8"),
            "{err}"
        );
    }

    #[test]
    fn registry_index_skips_attestations() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&index_json(&[("unknown", "unknown", None, 'a')]))
                .expect("json");
        v["manifests"][0]["annotations"] =
            serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
        let Manifest::Index(list) =
            parse(&serde_json::to_vec(&v).expect("json"), "", "x").expect("parse")
        else {
            panic!("index");
        };
        assert!(select_platform(&list, "linux", "amd64").is_err());
    }

    #[test]
    fn registry_manifest_kinds_and_bad_ones() {
        let image = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d('1'), "size": 5},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": d('2'), "size": 7}]
        });
        let Manifest::Image(m) =
            parse(&serde_json::to_vec(&image).expect("json"), "", "m").expect("docker v2")
        else {
            panic!("image");
        };
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.layers[0].size, 7);

        // No mediaType in the document: the Content-Type decides, then the shape.
        let mut oci = image.clone();
        oci.as_object_mut().expect("obj").remove("mediaType");
        let bytes = serde_json::to_vec(&oci).expect("json");
        let Manifest::Image(m) = parse(
            &bytes,
            "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
            "m",
        )
        .expect("oci") else {
            panic!("image");
        };
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert!(matches!(parse(&bytes, "", "m"), Ok(Manifest::Image(_))));

        let mut unknown = image.clone();
        unknown["mediaType"] = serde_json::json!("application/vnd.example.thing+json");
        let err = parse(
            &serde_json::to_vec(&unknown).expect("json"),
            "",
            "manifest x",
        )
        .expect_err("unknown media type")
        .to_string();
        assert!(
            err.contains("application/vnd.example.thing+json") && err.contains("manifest x"),
            "{err}"
        );

        let schema1 = serde_json::json!({"schemaVersion": 1, "name": "x", "fsLayers": []});
        let err = parse(&serde_json::to_vec(&schema1).expect("json"), "", "m")
            .expect_err("schema 1")
            .to_string();
        assert!(err.contains("schema 1"), "{err}");

        let mut bad_digest = image.clone();
        bad_digest["layers"][0]["digest"] = serde_json::json!("sha256:1234");
        let err = parse(&serde_json::to_vec(&bad_digest).expect("json"), "", "m")
            .expect_err("digest")
            .to_string();
        assert!(err.contains("sha256:1234"), "{err}");

        let mut foreign = image;
        foreign["layers"][0]["mediaType"] =
            serde_json::json!("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
        assert!(parse(&serde_json::to_vec(&foreign).expect("json"), "", "m").is_err());
        assert!(parse(b"not json", "", "m").is_err());
    }
}
