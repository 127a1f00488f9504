//! Registries: `pull`, `push` and `login` over the OCI distribution API, done by the node's
//! daemon (the node that runs the image), with progress streamed back to the CLI.
//!
//! - Auth: anonymous, HTTP basic, and bearer tokens from the realm a registry's
//!   `WWW-Authenticate` challenge names (Docker Hub's flow), with the credentials the CLI
//!   sends along with each request (it keeps them in its config file; see `shoal login`).
//! - Transport: HTTPS; plain HTTP only for registries on loopback (as Docker allows), in the
//!   daemon's `--insecure-registry` list, or when the request says `--insecure`.
//! - Pull (`pull.rs`): indexes resolved to linux/<this arch>; every manifest and blob verified
//!   against its digest and size; layers the store has are skipped; the rest downloaded three
//!   at a time and unpacked as they stream in; the image registered like `load` registers one
//!   (all or nothing; safe under concurrent pulls and loads of the same layers).
//! - Push (`push.rs`): the layers the registry lacks, then config and manifest as stored.
//! - Services: the executor asks [`Registry::ensure`] for a task's image; concurrent asks for
//!   one image share one pull.
//!
//! The client is `oci-client` (see agent/Cargo.toml for why); this module adds what Docker
//! users expect around it: manifests kept byte for byte, platform choice, errors that say what
//! to do, progress, and the store.

mod api;
mod error;
mod login;
pub(in crate::image) mod manifest;
mod progress;
pub(in crate::image) mod pull;
mod push;
mod session;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use api::RegistryApi;
pub use error::RegistryError;
pub use login::{parse_challenge, Challenge};
pub use progress::Progress;
pub use pull::Pulled;
pub use session::Credentials;
pub use settings::{
    credentials_key, credentials_key_of, is_loopback, RegistrySettings, DOCKER_HUB_AUTH_KEY,
};

use super::error::ImageError;
use super::reference::Reference;
use super::store::ImageStore;

/// How long the manager waits for a registry to confirm that a service's image exists.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Pulls into, and pushes from, one image store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    store: ImageStore,
    settings: Arc<RegistrySettings>,
    /// Pulls under way for tasks, by reference: a second task waits for the first's pull.
    pulling: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Registry {
    pub fn new(store: ImageStore, settings: RegistrySettings) -> Registry {
        Registry {
            store,
            settings: Arc::new(settings),
            pulling: Arc::default(),
        }
    }

    /// `docker pull REFERENCE`.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: &Credentials,
        insecure: bool,
        progress: &Progress,
    ) -> Result<Pulled, RegistryError> {
        pull::pull(
            &self.store,
            &self.settings,
            reference,
            credentials,
            insecure,
            progress,
        )
        .await
    }

    /// `docker push REFERENCE`; returns the manifest digest.
    pub async fn push(
        &self,
        reference: &str,
        credentials: &Credentials,
        insecure: bool,
        progress: &Progress,
    ) -> Result<String, RegistryError> {
        push::push(
            &self.store,
            &self.settings,
            reference,
            credentials,
            insecure,
            progress,
        )
        .await
    }

    /// `docker login SERVER`: checks the credentials; returns "Login Succeeded".
    pub async fn login(
        &self,
        server: &str,
        credentials: &Credentials,
        insecure: bool,
    ) -> Result<String, RegistryError> {
        login::login(&self.settings, server, credentials, insecure).await
    }

    /// A task's image: found in the store, or else pulled (anonymously) now. Returns whether
    /// it was pulled. Concurrent calls for one reference share one pull.
    pub async fn ensure(&self, reference: &str) -> Result<bool, RegistryError> {
        self.ensure_with(reference, &Credentials::default(), &Progress::none())
            .await
    }

    /// [`Registry::ensure`] with `credentials` for the image's registry, and the pull's
    /// progress sent to `progress` (a build's base image). A caller that waited for another's
    /// pull of the same image hears nothing.
    pub async fn ensure_with(
        &self,
        reference: &str,
        credentials: &Credentials,
        progress: &Progress,
    ) -> Result<bool, RegistryError> {
        if self.present(reference).await? {
            return Ok(false);
        }
        let key = Reference::parse_any(reference)?.canonical();
        let lock = {
            let mut pulling = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
            pulling.entry(key.clone()).or_default().clone()
        };
        let _turn = lock.lock().await;
        let result = if self.present(reference).await? {
            Ok(false)
        } else {
            match self.pull(reference, credentials, false, progress).await {
                Ok(pulled) => {
                    self.name_pinned(reference, &pulled.image.id).await;
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        };
        let mut pulling = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
        if pulling.get(&key).is_some_and(|l| Arc::strong_count(l) <= 2) {
            pulling.remove(&key);
        }
        result
    }

    /// A task's image pulled by a pinned reference (`name:tag@sha256:…`) is untagged, as any
    /// pull by digest: it gets the tag, as the service names it, when no local image has it.
    async fn name_pinned(&self, reference: &str, id: &str) {
        let Ok(parsed) = Reference::parse_any(reference) else {
            return;
        };
        let Some(tag) = parsed.digest.as_ref().and(parsed.tag_key()) else {
            return;
        };
        let (store, id) = (self.store.clone(), id.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            if store.resolve(&tag).is_err() {
                if let Err(e) = store.tag(&id, &tag) {
                    tracing::warn!(%tag, error = %e, "cannot tag a pulled image");
                }
            }
        })
        .await;
    }

    async fn present(&self, reference: &str) -> Result<bool, RegistryError> {
        let (store, r) = (self.store.clone(), reference.to_string());
        match tokio::task::spawn_blocking(move || store.resolve(&r)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(ImageError::NotFound { .. })) => Ok(false),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(RegistryError::Protocol {
                registry: String::new(),
                what: "looking up the image".into(),
                detail: e.to_string(),
            }),
        }
    }

    /// For the manager's check before it accepts a service: the image is in this node's
    /// store, or — when the reference names its registry (`HOST[:PORT]/...`) — that registry
    /// confirms (anonymously) that it exists, so the nodes can pull it. A bare name (Docker
    /// Hub) is not looked up: pull it first (`shoal pull NAME`); so a typo is caught at once
    /// and nothing leaves the machine unasked.
    pub async fn check_available(&self, reference: &str) -> Result<(), String> {
        self.available_digest(reference).await.map(|_| ())
    }

    /// [`Registry::check_available`], with the manifest (or index) digest the registry gave
    /// for the reference: what a service pins. `None`: the image is in this node's store.
    pub async fn available_digest(&self, reference: &str) -> Result<Option<String>, String> {
        match self.present(reference).await {
            Ok(true) => return Ok(None),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
        let local = self.store.root().display().to_string();
        if !names_registry(reference) {
            return Err(format!(
                "no such image `{reference}` in this node's image store ({local}): pull it first                  (`shoal pull {reference}`), or name its registry (HOST[:PORT]/NAME[:TAG]) for                  the nodes to pull it"
            ));
        }
        let parsed = Reference::parse_any(reference).map_err(|e| e.to_string())?;
        let session = session::Session::new(
            &self.settings,
            settings::Target::of(&parsed),
            &Credentials::default(),
            false,
            true,
        );
        let check = async {
            session
                .client
                .fetch_manifest_digest(&session.reference, &session.auth)
                .await
                .map_err(|e| session.error(&format!("manifest for {parsed}"), e))
        };
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(digest)) => Ok(Some(digest)),
            Ok(Err(e)) => Err(format!(
                "no such image `{reference}` in this node's image store ({local}), and its \
                 registry cannot provide it: {e}"
            )),
            Err(_) => Err(format!(
                "no such image `{reference}` in this node's image store ({local}), and registry \
                 {} did not answer within {} s",
                session.target.registry,
                CHECK_TIMEOUT.as_secs()
            )),
        }
    }

    /// The gRPC service over this registry client.
    pub fn into_server(self) -> shoal_proto::registry_server::RegistryServer<RegistryApi> {
        RegistryApi::new(self).into_server()
    }
}

/// Whether a reference spells out its registry (`host:5000/app`, `docker.io/library/x`), as
/// opposed to a bare name that means Docker Hub.
fn names_registry(reference: &str) -> bool {
    reference.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_explicit_names_only_are_looked_up() {
        for r in [
            "127.0.0.1:5000/app",
            "localhost/a:1",
            "docker.io/library/nginx",
        ] {
            assert!(super::names_registry(r), "{r}");
        }
        for r in ["nginx", "team/app:1", "busybox@sha256:00"] {
            assert!(!super::names_registry(r), "{r}");
        }
    }
}
