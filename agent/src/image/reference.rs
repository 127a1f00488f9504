//! Image names and tags, validated with Docker's grammar (distribution/reference), so that a
//! name shoal accepts is one Docker and registries accept too.
//!
//! ```text
//! reference  := name [ ":" tag ]
//! name       := [ domain "/" ] component ( "/" component )*      (at most 255 characters)
//! domain     := host-part ( "." host-part )* [ ":" port ]         (first part, if it has "." or
//!                                                                   ":" or is "localhost")
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//!
//! A missing tag means `latest`. Unlike Docker, a bare `busybox` is kept as `busybox` (not
//! `docker.io/library/busybox`): local names are local until the registry client arrives.
//! Digest references (`name@sha256:…`) are refused for now; use the image id instead.

use std::fmt;

use super::error::ImageError;

/// The tag a reference without one gets.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A validated `name:tag`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// The repository name, e.g. `busybox` or `registry.local:5000/team/app`.
    pub name: String,
    /// The tag, e.g. `latest`.
    pub tag: String,
}

impl Reference {
    /// Parses and validates `name` or `name:tag`; `name` alone means `name:latest`.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let bad = |reason: String| ImageError::InvalidReference {
            reference: reference.to_string(),
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
        if reference.contains('@') {
            return Err(bad(
                "digest references (name@sha256:…) are not supported by the local store yet; use \
                 name:tag or the image id (sha256:…)"
                    .into(),
            ));
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, DEFAULT_TAG),
        };
        validate_tag(tag).map_err(bad)?;
        validate_name(name).map_err(bad)?;
        Ok(Reference {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
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
