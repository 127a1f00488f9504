//! `docker login`: checks a user name and password against a registry the way Docker does —
//! `GET /v2/`, and on a 401 answer the challenge it carries: HTTP basic (the same request with
//! the credentials) or a bearer token realm (a token request with the credentials, no scope).
//! Nothing is stored here: the CLI keeps the credentials.

use std::time::Duration;

use super::error::RegistryError;
use super::session::Credentials;
use super::settings::{api_host, credentials_key, RegistrySettings};

/// The challenge of a `WWW-Authenticate` header, as far as a registry client cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication on every request.
    Basic { realm: String },
    /// Tokens from `realm` (`?service=...&scope=...`), sent as `Authorization: Bearer`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value; a bearer challenge wins when several are offered.
pub fn parse_challenge(header: &str) -> Result<Challenge, String> {
    let challenges = http_auth::parse_challenges(header)
        .map_err(|e| format!("cannot parse the WWW-Authenticate header `{header}`: {e}"))?;
    let param = |c: &http_auth::ChallengeRef, name: &str| {
        c.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    if let Some(c) = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
    {
        let realm = param(c, "realm")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("the bearer challenge `{header}` names no realm"))?;
        return Ok(Challenge::Bearer {
            realm,
            service: param(c, "service"),
            scope: param(c, "scope"),
        });
    }
    if let Some(c) = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("basic"))
    {
        return Ok(Challenge::Basic {
            realm: param(c, "realm").unwrap_or_default(),
        });
    }
    Err(format!(
        "the registry asks for an authentication scheme shoal does not speak: `{header}`"
    ))
}

/// Checks `credentials` against `server` (`HOST[:PORT]`; empty: Docker Hub). Returns Docker's
/// "Login Succeeded".
pub(super) async fn login(
    settings: &RegistrySettings,
    server: &str,
    credentials: &Credentials,
    insecure: bool,
) -> Result<String, RegistryError> {
    let key = credentials_key(Some(server));
    let registry = if key.starts_with("https://") {
        "docker.io".to_string()
    } else {
        key.clone()
    };
    let login = if key.starts_with("https://") {
        String::new()
    } else {
        key
    };
    let http = settings.allows_http(&registry, insecure);
    let base = format!(
        "{}://{}/v2/",
        if http { "http" } else { "https" },
        api_host(&registry)
    );
    let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
        registry: registry.clone(),
        detail: error_chain(&e),
        hint: if http {
            String::new()
        } else {
            format!(
                " (if it speaks plain HTTP, pass --insecure or start the daemon with \
                 --insecure-registry {registry})"
            )
        },
    };
    let denied = |detail: String| RegistryError::AuthDenied {
        registry: registry.clone(),
        user: credentials.username.clone(),
        what: "login".into(),
        detail,
        login: login.clone(),
    };
    let protocol = |detail: String| RegistryError::Protocol {
        registry: registry.clone(),
        what: "login".into(),
        detail,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| protocol(format!("cannot set up an HTTP client: {e}")))?;
    let res = client.get(&base).send().await.map_err(unreachable)?;
    match res.status().as_u16() {
        200 => return Ok("Login Succeeded".into()),
        401 => {}
        s => {
            return Err(protocol(format!(
                "GET {base} answered HTTP {s}: is this a registry?"
            )))
        }
    }
    let header = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| protocol(format!("GET {base} answered 401 without WWW-Authenticate")))?
        .to_string();
    match parse_challenge(&header).map_err(protocol)? {
        Challenge::Basic { .. } => {
            let res = client
                .get(&base)
                .basic_auth(&credentials.username, Some(&credentials.password))
                .send()
                .await
                .map_err(unreachable)?;
            match res.status().as_u16() {
                200 => Ok("Login Succeeded".into()),
                401 | 403 => Err(denied(format!(
                    "HTTP {} for {base} with basic authentication",
                    res.status().as_u16()
                ))),
                s => Err(protocol(format!("GET {base} answered HTTP {s}"))),
            }
        }
        Challenge::Bearer { realm, service, .. } => {
            if realm.starts_with("http://") && !http {
                return Err(protocol(format!(
                    "its token realm {realm} is plain HTTP: refusing to send a password there \
                     (allow the registry with --insecure-registry if you trust the network)"
                )));
            }
            let mut query: Vec<(&str, &str)> = vec![("account", credentials.username.as_str())];
            if let Some(s) = &service {
                query.push(("service", s));
            }
            let res = client
                .get(&realm)
                .query(&query)
                .basic_auth(&credentials.username, Some(&credentials.password))
                .send()
                .await
                .map_err(unreachable)?;
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            match status {
                200 => {
                    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
                        protocol(format!("the token service {realm} sent no JSON: {e}"))
                    })?;
                    let token = v["token"].as_str().or(v["access_token"].as_str());
                    if token.is_some_and(|t| !t.is_empty()) {
                        Ok("Login Succeeded".into())
                    } else {
                        Err(protocol(format!("the token service {realm} sent no token")))
                    }
                }
                401 | 403 => Err(denied(format!(
                    "the token service {realm} answered HTTP {status}: {}",
                    body.split_whitespace().collect::<Vec<_>>().join(" ")
                ))),
                s => Err(protocol(format!(
                    "the token service {realm} answered HTTP {s}"
                ))),
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_www_authenticate_parsing() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/busybox:pull""#
            ),
            Ok(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        // Scopes with commas, odd case, spaces after commas.
        assert_eq!(
            parse_challenge(
                r#"bearer realm="http://127.0.0.1:9/t", service="s", scope="repository:a/b:pull,push""#
            ),
            Ok(Challenge::Bearer {
                realm: "http://127.0.0.1:9/t".into(),
                service: Some("s".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Ok(Challenge::Basic {
                realm: "basic-realm".into()
            })
        );
        // Several challenges: bearer wins.
        assert!(matches!(
            parse_challenge(r#"Basic realm="x", Bearer realm="https://t/""#),
            Ok(Challenge::Bearer { .. })
        ));
        assert!(parse_challenge(r#"Bearer service="s""#)
            .expect_err("no realm")
            .contains("no realm"));
        assert!(parse_challenge(r#"Negotiate"#).is_err());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_err());
    }
}
