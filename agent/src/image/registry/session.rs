//! One conversation with one registry about one repository: the distribution client set up
//! for it (HTTPS, or plain HTTP where allowed), the credentials, and the translation of the
//! client's errors into [`RegistryError`]s that say what to do.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use super::error::RegistryError;
use super::settings::{credentials_key, RegistrySettings, Target};

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A user name and password (or token) for a registry; empty means anonymous.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty() && self.password.is_empty()
    }

    fn to_auth(&self) -> RegistryAuth {
        if self.is_anonymous() {
            RegistryAuth::Anonymous
        } else {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        }
    }
}

impl From<Option<shoal_proto::RegistryCredentials>> for Credentials {
    fn from(c: Option<shoal_proto::RegistryCredentials>) -> Credentials {
        c.map(|c| Credentials {
            username: c.username,
            password: c.password,
        })
        .unwrap_or_default()
    }
}

pub(super) struct Session {
    pub target: Target,
    pub reference: oci_client::Reference,
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    pub http: bool,
    credentials: Credentials,
}

impl Session {
    /// A client for `target`. `monolithic`: blobs go up in one PUT (else in 4 MiB PATCHes).
    pub fn new(
        settings: &RegistrySettings,
        target: Target,
        credentials: &Credentials,
        insecure: bool,
        monolithic: bool,
    ) -> Session {
        let http = settings.allows_http(&target.registry, insecure);
        let protocol = if http {
            ClientProtocol::HttpsExcept(vec![target.registry.clone(), target.api_host().into()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            use_monolithic_push: monolithic,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
            // Indexes are resolved here (manifest.rs), never by the client.
            platform_resolver: None,
            ..Default::default()
        };
        Session {
            reference: target.oci_reference(),
            target,
            client: oci_client::Client::new(config),
            auth: credentials.to_auth(),
            http,
            credentials: credentials.clone(),
        }
    }

    /// Logs in for `op` (a token from the registry's realm, when it uses tokens) so that a
    /// refused password is reported as such, not as a 401 later on.
    pub async fn authenticate(&self, op: RegistryOperation) -> Result<(), RegistryError> {
        let what = match op {
            RegistryOperation::Pull => "pulling",
            RegistryOperation::Push => "pushing",
        };
        self.client
            .auth(&self.reference, &self.auth, op)
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("{what} {}", self.target.repository), e))
    }

    /// `shoal login SERVER` for this registry.
    pub fn login_server(&self) -> String {
        let key = credentials_key(Some(&self.target.registry));
        if key.starts_with("https://") {
            String::new()
        } else {
            key
        }
    }

    /// Translates a client error met while doing `what` (e.g. "manifest for app:v1").
    pub fn error(&self, what: &str, e: OciDistributionError) -> RegistryError {
        let registry = self.target.registry.clone();
        let auth_error = |detail: String| {
            if self.credentials.is_anonymous() {
                RegistryError::AuthRequired {
                    registry: registry.clone(),
                    what: what.to_string(),
                    login: self.login_server(),
                }
            } else {
                RegistryError::AuthDenied {
                    registry: registry.clone(),
                    user: self.credentials.username.clone(),
                    what: what.to_string(),
                    detail,
                    login: self.login_server(),
                }
            }
        };
        match e {
            OciDistributionError::UnauthorizedError { url } => {
                auth_error(format!("HTTP 401 Unauthorized for {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                auth_error(format!("the token service answered: {}", one_line(&reason)))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    auth_error(detail)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    RegistryError::NotFound {
                        registry,
                        what: what.to_string(),
                        detail: format!("{detail} at {url}"),
                    }
                } else {
                    RegistryError::Protocol {
                        registry,
                        what: what.to_string(),
                        detail: format!("{detail} at {url}"),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, url, .. } => RegistryError::NotFound {
                registry,
                what: what.to_string(),
                detail: format!("HTTP 404 for {url}"),
            },
            OciDistributionError::ServerError { code, url, message } if code == 403 => {
                auth_error(format!("HTTP {code} for {url}: {}", one_line(&message)))
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => RegistryError::DigestMismatch {
                what: what.to_string(),
                expected,
                actual,
            },
            OciDistributionError::UnsupportedMediaTypeError(media_type) => {
                RegistryError::UnsupportedManifest {
                    what: what.to_string(),
                    media_type,
                }
            }
            OciDistributionError::UnsupportedSchemaVersionError(v) => {
                RegistryError::UnsupportedManifest {
                    what: what.to_string(),
                    media_type: format!("schema version {v}"),
                }
            }
            OciDistributionError::IoError(io) => self.io_error(what, io),
            OciDistributionError::RequestError(e)
                if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) =>
            {
                auth_error(one_line(&chain(&e)))
            }
            OciDistributionError::RequestError(e)
                if e.status().map(|s| s.as_u16()) == Some(404) =>
            {
                RegistryError::NotFound {
                    registry,
                    what: what.to_string(),
                    detail: one_line(&chain(&e)),
                }
            }
            OciDistributionError::RequestError(e) => self.request_error(what, &e),
            other => RegistryError::Protocol {
                registry,
                what: what.to_string(),
                detail: one_line(&chain(&other)),
            },
        }
    }

    /// An error of a blob stream: a digest mismatch (the client verifies as it streams) or a
    /// broken transfer.
    pub fn io_error(&self, what: &str, e: std::io::Error) -> RegistryError {
        if let Some(DigestError::VerificationError { expected, actual }) =
            e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
        {
            return RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        if let Some(req) = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) {
            return self.request_error(what, req);
        }
        RegistryError::Protocol {
            registry: self.target.registry.clone(),
            what: what.to_string(),
            detail: format!("the transfer broke: {}", one_line(&chain(&e))),
        }
    }

    fn request_error(&self, what: &str, e: &reqwest::Error) -> RegistryError {
        let detail = one_line(&chain(e));
        if e.is_connect() || e.is_timeout() {
            let hint = if self.http {
                String::new()
            } else {
                format!(
                    " (if it speaks plain HTTP, pass --insecure or start the daemon with \
                     --insecure-registry {})",
                    self.target.registry
                )
            };
            return RegistryError::Unreachable {
                registry: self.target.registry.clone(),
                detail,
                hint,
            };
        }
        RegistryError::Protocol {
            registry: self.target.registry.clone(),
            what: what.to_string(),
            detail: format!("the transfer broke: {detail}"),
        }
    }
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() > 400 {
        let mut cut = 400;
        while !flat.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &flat[..cut])
    } else {
        flat
    }
}
