//! Which registry a reference names, how to reach it (HTTPS, or plain HTTP when allowed), and
//! how a shoal [`Reference`] becomes the distribution API's registry + repository. Pure logic.

use std::net::IpAddr;

use super::super::reference::{Reference, DEFAULT_DOMAIN};

/// Where Docker Hub's registry API answers (Docker's `index.docker.io`).
pub const DOCKER_HUB_API: &str = "index.docker.io";
/// The key Docker's credentials file uses for Docker Hub.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// The daemon's registry settings.
#[derive(Clone, Debug, Default)]
pub struct RegistrySettings {
    /// Registries that may be reached over plain HTTP (`--insecure-registry`): `HOST:PORT`, or
    /// `HOST` for any port. Loopback registries (127.0.0.0/8, ::1, localhost) always may, as
    /// in Docker.
    pub insecure: Vec<String>,
}

impl RegistrySettings {
    /// Whether `host` (`HOST[:PORT]`, as in a reference) may be spoken to over plain HTTP:
    /// when the request says so (`--insecure`), when it is in the allow-list, or on loopback.
    pub fn allows_http(&self, host: &str, insecure_requested: bool) -> bool {
        if insecure_requested || is_loopback(host) {
            return true;
        }
        let (name, _) = split_port(host);
        self.insecure.iter().any(|allowed| {
            let allowed = allowed.trim();
            allowed == host || (!allowed.contains(':') && allowed == name)
        })
    }
}

/// `HOST[:PORT]` → (`HOST`, `PORT`), with `[v6]:port` understood.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, tail)) = rest.split_once(']') {
            return (ip, tail.strip_prefix(':'));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host, None),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (with or without a port).
pub fn is_loopback(host: &str) -> bool {
    let (name, _) = split_port(host);
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A reference as the distribution API sees it: which registry, which repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `HOST[:PORT]` as written in the reference (`docker.io` for Docker Hub).
    pub registry: String,
    /// `library/busybox`, `team/app`, `a/b`.
    pub repository: String,
    /// The tag, if any (empty when pulling by digest only).
    pub tag: String,
    /// `sha256:...` when the reference pins a digest.
    pub digest: Option<String>,
}

impl Target {
    /// Splits a normalised reference: `busybox` → (`docker.io`, `library/busybox`, `latest`).
    pub fn of(reference: &Reference) -> Target {
        let full = reference.full_name();
        let (registry, repository) = full
            .split_once('/')
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .unwrap_or_else(|| (DEFAULT_DOMAIN.to_string(), full.clone()));
        Target {
            registry,
            repository,
            tag: reference.tag.clone(),
            digest: reference.digest.clone(),
        }
    }

    /// The host the API requests go to (`index.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The distribution client's reference: by digest when one is pinned, else by tag.
    pub fn oci_reference(&self) -> oci_client::Reference {
        match &self.digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag.clone(),
            ),
        }
    }

    /// The manifest URL (for messages and tests): `SCHEME://HOST/v2/REPO/manifests/TAG|DIGEST`.
    pub fn manifest_url(&self, http: bool) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{}",
            if http { "http" } else { "https" },
            self.api_host(),
            self.repository,
            self.digest.as_deref().unwrap_or(&self.tag)
        )
    }

    /// What the progress says after `Pulling from`: `library/busybox`, `team/app`.
    pub fn shown_repository(&self) -> &str {
        &self.repository
    }
}

/// `docker.io` (and its aliases) → `index.docker.io`; anything else unchanged.
pub fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_API,
        other => other,
    }
}

/// The credentials-file key of a server as the user typed it (`shoal login [SERVER]`):
/// Docker Hub (no server, or any of its names) → `https://index.docker.io/v1/`; else the
/// bare `HOST[:PORT]` (a scheme and a path are dropped).
pub fn credentials_key(server: Option<&str>) -> String {
    let Some(server) = server.map(str::trim).filter(|s| !s.is_empty()) else {
        return DOCKER_HUB_AUTH_KEY.to_string();
    };
    let bare = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = bare.split('/').next().unwrap_or(bare);
    if api_host(host) == DOCKER_HUB_API {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// The registry (as a credentials key) a reference pulls from: see [`credentials_key`].
pub fn credentials_key_of(reference: &Reference) -> String {
    credentials_key(Some(&Target::of(reference).registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        Target::of(&Reference::parse_any(s).expect(s))
    }

    #[test]
    fn registry_reference_to_url() {
        let t = target("busybox");
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        assert_eq!(
            t.manifest_url(false),
            "https://index.docker.io/v2/library/busybox/manifests/latest"
        );
        let t = target("team/app:v1");
        assert_eq!(
            t.manifest_url(false),
            "https://index.docker.io/v2/team/app/manifests/v1"
        );
        let t = target("127.0.0.1:5000/a/b:t");
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert_eq!(
            t.manifest_url(true),
            "http://127.0.0.1:5000/v2/a/b/manifests/t"
        );
        let hex = "ab".repeat(32);
        let t = target(&format!("localhost:5000/app@sha256:{hex}"));
        assert_eq!(t.digest.as_deref(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(
            t.manifest_url(true),
            format!("http://localhost:5000/v2/app/manifests/sha256:{hex}")
        );
        let o = t.oci_reference();
        assert_eq!(o.registry(), "localhost:5000");
        assert_eq!(o.repository(), "app");
        assert_eq!(o.digest(), Some(format!("sha256:{hex}").as_str()));
        let o = target("registry.example:443/x/y:z").oci_reference();
        assert_eq!((o.repository(), o.tag()), ("x/y", Some("z")));
    }

    #[test]
    fn registry_plain_http_only_when_allowed() {
        let s = RegistrySettings {
            insecure: vec!["reg.local:5000".into(), "other.local".into()],
        };
        for host in [
            "127.0.0.1:5000",
            "127.9.9.9",
            "localhost:1234",
            "[::1]:5000",
            "reg.local:5000",
            "other.local:80",
            "other.local",
        ] {
            assert!(s.allows_http(host, false), "{host}");
        }
        for host in ["reg.local:5001", "reg.local", "docker.io", "10.0.0.1:5000"] {
            assert!(!s.allows_http(host, false), "{host}");
            assert!(s.allows_http(host, true), "{host} with --insecure");
        }
    }

    #[test]
    fn registry_credentials_keys_like_docker() {
        for s in [
            None,
            Some(""),
            Some("docker.io"),
            Some("index.docker.io"),
            Some("https://index.docker.io/v1/"),
            Some("registry-1.docker.io"),
        ] {
            assert_eq!(credentials_key(s), DOCKER_HUB_AUTH_KEY, "{s:?}");
        }
        assert_eq!(credentials_key(Some("127.0.0.1:5000")), "127.0.0.1:5000");
        assert_eq!(
            credentials_key(Some("https://reg.example:5000/v2/")),
            "reg.example:5000"
        );
        let r = Reference::parse("127.0.0.1:5000/app").expect("ref");
        assert_eq!(credentials_key_of(&r), "127.0.0.1:5000");
        let r = Reference::parse("nginx").expect("ref");
        assert_eq!(credentials_key_of(&r), DOCKER_HUB_AUTH_KEY);
    }
}
