//! The CLI's registry credentials, in Docker's `config.json` format:
//! `{"auths": {"SERVER": {"auth": base64("user:password")}}}` (Docker Hub's key is
//! `https://index.docker.io/v1/`), kept in `$SHOAL_CONFIG/config.json` or else
//! `~/.shoal/config.json`, mode 0600. Other keys in the file are kept as they are.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{Map, Value};

/// The credentials file: `$SHOAL_CONFIG/config.json`, else `$HOME/.shoal/config.json`.
pub fn config_path() -> Result<PathBuf> {
    config_path_from(
        std::env::var_os("SHOAL_CONFIG").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn config_path_from(shoal_config: Option<PathBuf>, home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = shoal_config.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(dir.join("config.json"));
    }
    match home.filter(|h| !h.as_os_str().is_empty()) {
        Some(home) => Ok(home.join(".shoal").join("config.json")),
        None => bail!(
            "cannot tell where to keep registry credentials: set SHOAL_CONFIG (a directory) or \
             HOME"
        ),
    }
}

/// A user name and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// What the daemon's registry requests carry.
impl From<Login> for shoal_proto::RegistryCredentials {
    fn from(login: Login) -> Self {
        shoal_proto::RegistryCredentials {
            username: login.username,
            password: login.password,
        }
    }
}

/// The parsed file (an empty one if it does not exist).
pub struct CredentialsFile {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl CredentialsFile {
    pub fn open(path: &Path) -> Result<CredentialsFile> {
        let doc = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => bail!("{} is not a JSON object: fix or remove it", path.display()),
                Err(e) => bail!("cannot parse {}: {e}; fix or remove it", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(CredentialsFile {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// The credentials saved for `server` (a credentials key), if any.
    pub fn get(&self, server: &str) -> Result<Option<Login>> {
        let Some(entry) = self.doc.get("auths").and_then(|a| a.get(server)) else {
            return Ok(None);
        };
        if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .with_context(|| {
                    format!(
                        "{}: the `auth` of {server} is not base64; log in again",
                        self.path.display()
                    )
                })?;
            let text = String::from_utf8(decoded).with_context(|| {
                format!(
                    "{}: the `auth` of {server} is not text",
                    self.path.display()
                )
            })?;
            let Some((user, password)) = text.split_once(':') else {
                bail!(
                    "{}: the `auth` of {server} is not `user:password`; log in again",
                    self.path.display()
                );
            };
            return Ok(Some(Login {
                username: user.into(),
                password: password.into(),
            }));
        }
        // Docker also reads separate fields.
        match (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            (Some(u), Some(p)) => Ok(Some(Login {
                username: u.into(),
                password: p.into(),
            })),
            _ => Ok(None),
        }
    }

    /// Every saved login, by server.
    pub fn all(&self) -> Result<BTreeMap<String, Login>> {
        let servers = self.doc.get("auths").and_then(Value::as_object);
        let mut out = BTreeMap::new();
        for server in servers.into_iter().flat_map(|a| a.keys()) {
            if let Some(login) = self.get(server)? {
                out.insert(server.clone(), login);
            }
        }
        Ok(out)
    }

    pub fn set(&mut self, server: &str, login: &Login) {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", login.username, login.password));
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Value::Object(auths) = auths {
            auths.insert(server.into(), serde_json::json!({ "auth": auth }));
        }
    }

    /// Forgets `server`; whether it was there.
    pub fn remove(&mut self, server: &str) -> bool {
        self.doc
            .get_mut("auths")
            .and_then(Value::as_object_mut)
            .is_some_and(|a| a.remove(server).is_some())
    }

    /// Writes the file (0600, its directory 0700) atomically.
    pub fn save(&self) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod {}", dir.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(&Value::Object(self.doc.clone()))?;
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", self.path.display()));
        }
        Ok(())
    }
}

/// The credentials saved for `server` in the user's file (none if there is no file).
pub fn lookup(server: &str) -> Result<Option<Login>> {
    CredentialsFile::open(&config_path()?)?.get(server)
}

/// Every login saved in the user's file, by server (none if there is no file, or no place
/// for one): what a build sends, as Docker's CLI does, for the base images it may pull.
pub fn saved_logins() -> Result<BTreeMap<String, Login>> {
    match config_path() {
        Ok(path) => CredentialsFile::open(&path)?.all(),
        Err(_) => Ok(BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_round_trip_in_docker_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cfg").join("config.json");
        let mut f = CredentialsFile::open(&path).expect("open missing");
        assert_eq!(f.get("127.0.0.1:5000").expect("get"), None);
        let login = Login {
            username: "alice".into(),
            password: "s3cret:with:colons".into(),
        };
        f.set("127.0.0.1:5000", &login);
        f.save().expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let raw: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            raw["auths"]["127.0.0.1:5000"]["auth"],
            "YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"
        );
        let f = CredentialsFile::open(&path).expect("reopen");
        assert_eq!(f.get("127.0.0.1:5000").expect("get"), Some(login));
        assert_eq!(f.get("other:5000").expect("get"), None);
    }

    #[test]
    fn credentials_file_keeps_other_keys_and_reads_docker_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "Ym9iOnB3"},
                "reg:5000": {"username": "u", "password": "p"}},
               "credsStore": "desktop", "psFormat": "x"}"#,
        )
        .expect("write");
        let mut f = CredentialsFile::open(&path).expect("open");
        assert_eq!(
            f.get("https://index.docker.io/v1/").expect("hub"),
            Some(Login {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            f.get("reg:5000").expect("fields").map(|l| l.username),
            Some("u".to_string())
        );
        assert!(f.remove("reg:5000"));
        assert!(!f.remove("reg:5000"));
        f.save().expect("save");
        let raw: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(raw["credsStore"], "desktop");
        assert!(raw["auths"].get("reg:5000").is_none());
        assert!(raw["auths"].get("https://index.docker.io/v1/").is_some());

        std::fs::write(&path, "{not json").expect("write");
        let err = CredentialsFile::open(&path)
            .err()
            .expect("bad json")
            .to_string();
        assert!(err.contains("fix or remove"), "{err}");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "!!"}}}"#).expect("write");
        let err = CredentialsFile::open(&path)
            .expect("open")
            .get("h")
            .expect_err("bad base64")
            .to_string();
        assert!(err.contains("not base64"), "{err}");
    }

    #[test]
    fn credentials_path_like_docker_config() {
        assert_eq!(
            config_path_from(Some("/x/cfg".into()), Some("/home/u".into())).expect("path"),
            PathBuf::from("/x/cfg/config.json")
        );
        assert_eq!(
            config_path_from(None, Some("/home/u".into())).expect("path"),
            PathBuf::from("/home/u/.shoal/config.json")
        );
        assert!(config_path_from(None, None).is_err());
    }
}
