//! Secrets and configs (Swarm's): named bytes in the store, given to the tasks that reference
//! them. The rules are pure functions over the state; [`SecretsApi`] is the thin gRPC side.
//!
//! - Names follow Docker's grammar and are unique per kind; data is at most 500 KiB.
//! - A service names a secret by name; the manager fills in its id (so a stack's secret made in
//!   the same deploy resolves too). One that does not exist is an error that says how to make it.
//! - A secret's data never leaves through the API (`inspect` shows everything else); a
//!   config's does, as in Docker.
//! - Removal is refused while a service uses it.

use shoal_proto::secrets_server::{Secrets, SecretsServer};
use shoal_proto::store_object::Object;
use shoal_proto::{
    ChangeKind, CreateSecretRequest, GetSecretRequest, ListSecretsRequest, ListSecretsResponse,
    RemoveSecretResponse, Secret, SecretKind, SecretResponse, SecretSpec, ServiceSpec,
};
use tonic::{Request, Response, Status};

use crate::consensus::{new_id, Writer};
use crate::dispatcher::write_status;
use crate::store::{change, State, Store};

/// Docker's limit for a secret or config.
pub const MAX_DATA: usize = 500 * 1024;

pub fn kind_word(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "secret",
        SecretKind::Config => "config",
    }
}

fn name_of(s: &Secret) -> &str {
    s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

fn kind_of(s: &Secret) -> SecretKind {
    s.spec.as_ref().map(|s| s.kind()).unwrap_or_default()
}

/// Checks a new secret or config against the rules and the state.
pub fn check_secret(state: &State, spec: &SecretSpec) -> Result<(), String> {
    let word = kind_word(spec.kind());
    let valid = !spec.name.is_empty()
        && spec.name.len() <= 64
        && spec.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(format!(
            "invalid {word} name {:?}: use up to 64 letters, digits, '_', '.' or '-', starting \
             with a letter or digit",
            spec.name
        ));
    }
    if spec.data.len() > MAX_DATA {
        return Err(format!(
            "{word} {} is {} bytes: the limit is 500 KiB",
            spec.name,
            spec.data.len()
        ));
    }
    if named(state, spec.kind(), &spec.name).is_some() {
        return Err(format!("{word} {} already exists", spec.name));
    }
    Ok(())
}

/// The secret or config of that exact name.
pub fn named<'a>(state: &'a State, kind: SecretKind, name: &str) -> Option<&'a Secret> {
    state
        .secrets
        .values()
        .find(|s| kind_of(s) == kind && name_of(s) == name)
}

/// A secret or config by id, name, or unique id prefix.
pub fn find_secret<'a>(
    state: &'a State,
    kind: SecretKind,
    key: &str,
) -> Result<&'a Secret, String> {
    let word = kind_word(kind);
    let of_kind = || state.secrets.values().filter(move |s| kind_of(s) == kind);
    if let Some(s) = state.secrets.get(key).filter(|s| kind_of(s) == kind) {
        return Ok(s);
    }
    if let Some(s) = of_kind().find(|s| name_of(s) == key) {
        return Ok(s);
    }
    let matches: Vec<&Secret> = of_kind()
        .filter(|s| !key.is_empty() && s.id.starts_with(key))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no such {word}: {key}")),
        _ => Err(format!("{word} {key:?} is ambiguous: give more of its id")),
    }
}

/// The services whose tasks use the secret or config.
pub fn users_of(state: &State, id: &str) -> Vec<String> {
    state
        .services
        .values()
        .filter_map(|s| s.spec.as_ref())
        .filter(|s| {
            s.container
                .iter()
                .flat_map(|c| c.secrets.iter().chain(&c.configs))
                .any(|r| r.secret_id == id)
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Fills in the id of each secret and config `spec` references, by name. `local` resolves
/// first (a stack's own, made in the same deploy).
pub fn resolve_secrets(
    state: &State,
    spec: &mut ServiceSpec,
    local: &dyn Fn(SecretKind, &str) -> Option<String>,
) -> Result<(), String> {
    let Some(container) = spec.container.as_mut() else {
        return Ok(());
    };
    for (kind, refs) in [
        (SecretKind::Secret, &mut container.secrets),
        (SecretKind::Config, &mut container.configs),
    ] {
        for r in refs.iter_mut() {
            let key = if r.secret_name.is_empty() {
                r.secret_id.clone()
            } else {
                r.secret_name.clone()
            };
            let id = match local(kind, &key) {
                Some(id) => id,
                None => find_secret(state, kind, &key)
                    .map_err(|e| {
                        format!(
                            "{e}: create it first with `shoal {} create {key} FILE`",
                            kind_word(kind)
                        )
                    })?
                    .id
                    .clone(),
            };
            r.secret_id = id;
            if r.secret_name.is_empty() {
                r.secret_name = key;
            }
        }
    }
    Ok(())
}

/// What the API shows of a secret: all but a secret's data.
pub fn redacted(mut s: Secret) -> Secret {
    if kind_of(&s) == SecretKind::Secret {
        if let Some(spec) = s.spec.as_mut() {
            spec.data.clear();
        }
    }
    s
}

/// A change that removes the secret or config (its kind says which name space).
pub fn delete_secret(s: &Secret) -> shoal_proto::StoreChange {
    change(
        ChangeKind::Delete,
        Object::Secret(Secret {
            id: s.id.clone(),
            meta: None,
            spec: Some(SecretSpec {
                kind: kind_of(s) as i32,
                ..Default::default()
            }),
        }),
    )
}

/// The `Secrets` gRPC service on the managers' control socket.
pub struct SecretsApi {
    store: Store,
    writer: Writer,
}

impl SecretsApi {
    pub fn new(store: Store, writer: Writer) -> SecretsApi {
        SecretsApi { store, writer }
    }

    pub fn into_service(self) -> SecretsServer<SecretsApi> {
        SecretsServer::new(self)
    }

    fn find(&self, kind: SecretKind, key: &str) -> Result<Secret, Status> {
        find_secret(&self.store.read(), kind, key)
            .cloned()
            .map_err(Status::not_found)
    }
}

#[tonic::async_trait]
impl Secrets for SecretsApi {
    async fn create(
        &self,
        request: Request<CreateSecretRequest>,
    ) -> Result<Response<SecretResponse>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("Create needs a spec"))?;
        check_secret(&self.store.read(), &spec).map_err(Status::invalid_argument)?;
        let (kind, id) = (spec.kind(), new_id());
        let created = Secret {
            id: id.clone(),
            meta: None,
            spec: Some(spec),
        };
        self.writer
            .commit(vec![change(ChangeKind::Create, Object::Secret(created))])
            .await
            .map_err(write_status)?;
        Ok(Response::new(SecretResponse {
            secret: Some(redacted(self.find(kind, &id)?)),
        }))
    }

    async fn list(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        let kind = request.into_inner().kind();
        let secrets = self
            .store
            .read()
            .secrets
            .values()
            .filter(|s| kind_of(s) == kind)
            .cloned()
            .map(redacted)
            .collect();
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn get(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<SecretResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(SecretResponse {
            secret: Some(redacted(self.find(r.kind(), &r.secret)?)),
        }))
    }

    async fn remove(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<RemoveSecretResponse>, Status> {
        let r = request.into_inner();
        let found = self.find(r.kind(), &r.secret)?;
        let users = users_of(&self.store.read(), &found.id);
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{} {} is in use by service {}: remove the service first",
                kind_word(r.kind()),
                name_of(&found),
                users.join(", ")
            )));
        }
        self.writer
            .commit(vec![delete_secret(&found)])
            .await
            .map_err(write_status)?;
        Ok(Response::new(RemoveSecretResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, SecretReference, Service};

    fn secret(id: &str, kind: SecretKind, name: &str) -> Secret {
        Secret {
            id: id.into(),
            meta: None,
            spec: Some(SecretSpec {
                kind: kind as i32,
                name: name.into(),
                data: b"s3cret".to_vec(),
                ..Default::default()
            }),
        }
    }

    fn state() -> State {
        let mut state = State::default();
        for s in [
            secret("abc1", SecretKind::Secret, "db_password"),
            secret("abd2", SecretKind::Config, "db_password"),
        ] {
            state.secrets.insert(s.id.clone(), s);
        }
        state
    }

    #[test]
    fn names_are_checked_and_unique_per_kind() {
        let state = state();
        let spec = |kind: SecretKind, name: &str, size: usize| SecretSpec {
            kind: kind as i32,
            name: name.into(),
            data: vec![b'x'; size],
            ..Default::default()
        };
        assert!(check_secret(&state, &spec(SecretKind::Secret, "other", 10)).is_ok());
        let e = check_secret(&state, &spec(SecretKind::Secret, "db_password", 1)).unwrap_err();
        assert_eq!(e, "secret db_password already exists");
        let e = check_secret(&state, &spec(SecretKind::Config, "-bad", 1)).unwrap_err();
        assert!(e.starts_with("invalid config name \"-bad\""), "{e}");
        let e = check_secret(&state, &spec(SecretKind::Secret, "big", MAX_DATA + 1)).unwrap_err();
        assert!(e.contains("500 KiB"), "{e}");
    }

    #[test]
    fn found_by_id_name_or_prefix_within_their_kind() {
        let state = state();
        assert_eq!(
            find_secret(&state, SecretKind::Secret, "db_password").map(|s| s.id.as_str()),
            Ok("abc1")
        );
        assert_eq!(
            find_secret(&state, SecretKind::Config, "db_password").map(|s| s.id.as_str()),
            Ok("abd2")
        );
        assert_eq!(
            find_secret(&state, SecretKind::Config, "abd").map(|s| s.id.as_str()),
            Ok("abd2")
        );
        assert_eq!(
            find_secret(&state, SecretKind::Secret, "abd2").unwrap_err(),
            "no such secret: abd2"
        );
    }

    #[test]
    fn references_resolve_to_ids_and_unknown_ones_say_how_to_fix() {
        let mut state = state();
        let mut spec = ServiceSpec {
            name: "web".into(),
            container: Some(ContainerSpec {
                secrets: vec![SecretReference {
                    secret_name: "db_password".into(),
                    ..Default::default()
                }],
                configs: vec![SecretReference {
                    secret_name: "fresh".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let local = |kind: SecretKind, name: &str| {
            (kind == SecretKind::Config && name == "fresh").then(|| "new1".to_string())
        };
        resolve_secrets(&state, &mut spec, &local).expect("resolves");
        let c = spec.container.clone().expect("container");
        assert_eq!(c.secrets[0].secret_id, "abc1");
        assert_eq!(c.configs[0].secret_id, "new1");
        state.services.insert(
            "s1".into(),
            Service {
                id: "s1".into(),
                spec: Some(spec.clone()),
                ..Default::default()
            },
        );
        assert_eq!(users_of(&state, "abc1"), ["web"]);
        let e = resolve_secrets(&state, &mut spec, &|_, _| None).unwrap_err();
        assert!(
            e.contains("no such config: fresh") && e.contains("shoal config create"),
            "{e}"
        );
    }

    #[test]
    fn a_secrets_data_never_leaves_but_a_configs_does() {
        let s = redacted(secret("a", SecretKind::Secret, "x"));
        assert!(s.spec.expect("spec").data.is_empty());
        let c = redacted(secret("b", SecretKind::Config, "x"));
        assert_eq!(c.spec.expect("spec").data, b"s3cret");
    }
}
