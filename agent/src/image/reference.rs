//! Image references, validated with Docker's grammar (distribution/reference), so that a
//! name shoal accepts is one Docker and registries accept too.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*      (at most 255 characters)
//! domain     := host-part ( "." host-part )* [ ":" port ]         (first part, if it has "." or
//!                                                                   ":" or is "localhost")
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex digits
//! ```
//!
//! Normalised as Docker does: `nginx` is `docker.io/library/nginx:latest`
//! ([`Reference::canonical`]), and `docker.io/library/nginx`, `index.docker.io/library/nginx`
//! and `nginx` are the same name. The store keys tags by the short ("familiar") form Docker
//! shows (`nginx:latest`, `team/app:v1`, `host:5000/a/b:t`), which is what [`Reference::name`]
//! holds and `Display` prints; so tags written by earlier versions stay valid as they are.
//! A missing tag means `latest`, unless a digest is given (`name@sha256:…` names an image by
//! digest, and has no tag).

use std::fmt;

use super::error::ImageError;

/// The tag a reference without one gets.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Docker Hub's domain, implied when a name has none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's namespace for official images, implied for one-component names.
const OFFICIAL_NAMESPACE: &str = "library";

/// A validated `name:tag`, `name@digest` or `name:tag@digest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// The repository name in Docker's short ("familiar") form, e.g. `busybox`, `team/app` or
    /// `registry.local:5000/team/app` (`docker.io/` and `library/` are dropped).
    pub name: String,
    /// The tag, e.g. `latest`; empty only when a digest is given without a tag.
    pub tag: String,
    /// `sha256:<64 hex>` when the reference names an image by digest.
    pub digest: Option<String>,
}

impl Reference {
    /// The repository name with Docker's defaults spelled out:
    /// `docker.io/library/busybox`, `docker.io/team/app`, `host:5000/a/b`.
    pub fn full_name(&self) -> String {
        let first = self.name.split('/').next().unwrap_or_default();
        if self.name.contains('/') && is_domain(first) {
            self.name.clone()
        } else if self.name.contains('/') {
            format!("{DEFAULT_DOMAIN}/{}", self.name)
        } else {
            format!("{DEFAULT_DOMAIN}/{OFFICIAL_NAMESPACE}/{}", self.name)
        }
    }

    /// The fully normalised reference, as Docker's `ParseNormalizedNamed` gives it:
    /// `nginx` → `docker.io/library/nginx:latest`.
    pub fn canonical(&self) -> String {
        let mut out = self.full_name();
        if !self.tag.is_empty() {
            out.push(':');
            out.push_str(&self.tag);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }

    /// `name:tag` (familiar form), the key of the tags table; `None` for a digest-only
    /// reference.
    pub fn tag_key(&self) -> Option<String> {
        (!self.tag.is_empty()).then(|| format!("{}:{}", self.name, self.tag))
    }

    /// Parses like [`Reference::parse_any`], but refuses digests: for names that become tags.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let r = Reference::parse_any(reference)?;
        if r.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "digest references (name@sha256:…) cannot name a new tag: give name or \
                         name:tag"
                    .into(),
            });
        }
        Ok(r)
    }

    /// Parses and validates `name`, `name:tag`, `name@sha256:…` or `name:tag@sha256:…`;
    /// `name` alone means `name:latest`.
    pub fn parse_any(reference: &str) -> Result<Reference, ImageError> {
        let bad = |reason: String| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason,
        };
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
                    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                if !ok {
                    return Err(bad(format!(
                        "`{digest}` is not a valid digest: digest references are \
                         name@sha256:<64 lowercase hex digits>"
                    )));
                }
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let mut r = Reference::parse_name_tag(rest, reference, digest.is_some())?;
        r.digest = digest;
        Ok(r)
    }

    fn parse_name_tag(
        reference: &str,
        whole: &str,
        has_digest: bool,
    ) -> Result<Reference, ImageError> {
        let bad = |reason: String| ImageError::InvalidReference {
            reference: whole.to_string(),
            reason,
        };
        if reference.is_empty() {
            return Err(bad("the name is empty".into()));
        }
        if let Some(c) = reference
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(format!(
                "it contains {}; names are made of lowercase letters, digits, `.`, `_`, `-` and `/`",
                if c.is_whitespace() {
                    "whitespace".to_string()
                } else {
                    format!("the control character {c:?}")
                }
            )));
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None if has_digest => (reference, ""),
            None => (reference, DEFAULT_TAG),
        };
        if !tag.is_empty() || !has_digest {
            validate_tag(tag).map_err(bad)?;
        }
        validate_name(name).map_err(bad)?;
        Ok(Reference {
            name: familiar(name),
            tag: tag.to_string(),
            digest: None,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.tag.is_empty() {
            write!(f, ":{}", self.tag)?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether the first component of a name is a registry host (Docker's rule).
fn is_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Docker's familiar form: `docker.io/library/x` and `index.docker.io/library/x` → `x`,
/// `docker.io/a/b` → `a/b`; anything else unchanged.
fn familiar(name: &str) -> String {
    for hub in [DEFAULT_DOMAIN, "index.docker.io"] {
        if let Some(rest) = name.strip_prefix(hub).and_then(|r| r.strip_prefix('/')) {
            return match rest.strip_prefix("library/") {
                Some(official) if !official.contains('/') => official.to_string(),
                _ => rest.to_string(),
            };
        }
    }
    name.to_string()
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after `:` is empty (leave out `:` for `latest`)".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "the tag is {} characters long; at most {MAX_TAG_LEN} are allowed",
            tag.len()
        ));
    }
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "the tag `{tag}` is invalid: use letters, digits, `_`, `.` and `-`, not starting with \
             `.` or `-`"
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name before `:` is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let mut path = &parts[..];
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            validate_domain(first)?;
            path = &parts[1..];
        }
    }
    for component in path {
        validate_component(component)?;
    }
    Ok(())
}

fn validate_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err(
            "a name component is empty (two `/` in a row, or a leading/trailing `/`)".into(),
        );
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("`{component}`: repository names must be lowercase"));
    }
    let invalid = || {
        format!(
            "`{component}` is not a valid name component: use lowercase letters and digits, \
             separated by `.`, `_`, `__` or dashes, starting and ending with a letter or digit"
        )
    };
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(invalid());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(invalid());
        }
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{domain}`: the registry port must be a number"));
        }
    }
    for part in host.split('.') {
        let b = part.as_bytes();
        let ok = !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
        if !ok {
            return Err(format!(
                "`{domain}` is not a valid registry host: use letters, digits, `-` and `.`, with \
                 an optional `:port`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn image_reference_normalises_and_accepts_docker_names() {
        assert_eq!(ok("busybox"), "busybox:latest");
        assert_eq!(ok("busybox:1.36"), "busybox:1.36");
        assert_eq!(ok("team/app_x:v1.2-rc_3"), "team/app_x:v1.2-rc_3");
        assert_eq!(ok("a__b/c--d.e"), "a__b/c--d.e:latest");
        assert_eq!(ok("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            ok("Registry.Local:5000/app:TAG"),
            "Registry.Local:5000/app:TAG"
        );
        assert_eq!(ok("localhost/app"), "localhost/app:latest");
        let r = Reference::parse("host.io:443/a/b:t").expect("parse");
        assert_eq!((r.name.as_str(), r.tag.as_str()), ("host.io:443/a/b", "t"));
    }

    #[test]
    fn image_reference_normalises_like_docker() {
        let hex = "a".repeat(64);
        for (input, familiar_form, canonical) in [
            ("nginx", "nginx:latest", "docker.io/library/nginx:latest"),
            (
                "docker.io/library/nginx",
                "nginx:latest",
                "docker.io/library/nginx:latest",
            ),
            (
                "index.docker.io/library/nginx:1",
                "nginx:1",
                "docker.io/library/nginx:1",
            ),
            (
                "docker.io/team/app",
                "team/app:latest",
                "docker.io/team/app:latest",
            ),
            ("team/app:v1", "team/app:v1", "docker.io/team/app:v1"),
            (
                "localhost:5000/a/b:t",
                "localhost:5000/a/b:t",
                "localhost:5000/a/b:t",
            ),
        ] {
            let r = Reference::parse(input).expect(input);
            assert_eq!(r.to_string(), familiar_form, "{input}");
            assert_eq!(r.canonical(), canonical, "{input}");
        }
        let r = Reference::parse_any(&format!("host:5000/a/b@sha256:{hex}")).expect("digest");
        assert_eq!(r.name, "host:5000/a/b");
        assert_eq!(r.tag, "");
        assert_eq!(r.digest.as_deref(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(r.to_string(), format!("host:5000/a/b@sha256:{hex}"));
        assert_eq!(r.tag_key(), None);
        let r = Reference::parse_any(&format!("nginx:1@sha256:{hex}")).expect("tag+digest");
        assert_eq!(
            r.canonical(),
            format!("docker.io/library/nginx:1@sha256:{hex}")
        );
        let err = Reference::parse(&format!("nginx@sha256:{hex}")).expect_err("no digest tags");
        assert!(err.to_string().contains("cannot name a new tag"), "{err}");
    }

    #[test]
    fn image_reference_rejects_invalid_names_clearly() {
        for (s, needle) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("Foo/bar", "lowercase"),
            ("bad name", "whitespace"),
            ("name:", "tag after"),
            (":tag", "name before"),
            ("a//b", "empty"),
            ("/a", "empty"),
            ("a/", "empty"),
            ("-a", "not a valid name component"),
            ("a..b", "not a valid name component"),
            ("a___b", "not a valid name component"),
            ("a:-x", "tag `-x` is invalid"),
            ("a@sha256:00", "digest references"),
            ("a@md5:00", "digest references"),
            ("host:x/a", "port must be a number"),
        ] {
            let err = Reference::parse(s).expect_err(s).to_string();
            assert!(err.contains(needle), "{s:?}: {err}");
            assert!(err.contains("invalid image reference"), "{err}");
        }
        let long = "a".repeat(256);
        assert!(Reference::parse(&long).is_err());
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }
}
