//! Checks a service spec before anything is written: bad input changes nothing.

use shoal_proto::ServiceSpec;

/// Docker's rule for object names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 63
}

/// Returns what is wrong with `spec`, in words a user can act on.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), String> {
    if !valid_name(&spec.name) {
        return Err(format!(
            "invalid service name {:?}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
            spec.name
        ));
    }
    let container = spec
        .container
        .as_ref()
        .ok_or("the service has no container spec")?;
    if container.image.trim().is_empty() {
        return Err("the service has no image: give one, e.g. `busybox`".into());
    }
    for limits in [&spec.limits, &spec.reservations].into_iter().flatten() {
        if limits.memory_bytes < 0 || limits.nano_cpus < 0 || limits.pids < 0 {
            return Err("resource limits and reservations cannot be negative".into());
        }
        if limits.memory_bytes != 0 && limits.memory_bytes < 6 * 1024 * 1024 {
            return Err(format!(
                "memory limit {} bytes is too small: the minimum is 6 MiB, like Docker's",
                limits.memory_bytes
            ));
        }
    }
    for kv in &container.env {
        if kv.split('=').next().is_none_or(str::is_empty) {
            return Err(format!("invalid environment entry {kv:?}: use KEY=VALUE"));
        }
    }
    if let Some(h) = &container.healthcheck {
        let ok = match h.test.first().map(String::as_str) {
            None | Some("NONE") => true,
            Some("CMD") | Some("CMD-SHELL") => h.test.len() > 1,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "invalid healthcheck test {:?}: use [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                h.test
            ));
        }
    }
    for key in container.log_options.keys() {
        if key != "max-size" && key != "max-file" {
            return Err(format!(
                "logging option {key:?} is not supported: use max-size and max-file"
            ));
        }
    }
    if spec.mode.is_none() {
        return Err("the service has no mode (replicated or global)".into());
    }
    if let Some(placement) = &spec.placement {
        // The scheduler would only leave the tasks pending with this reason: say it now.
        crate::scheduler::constraint::Rules::parse(Some(placement)).map_err(|e| e.to_string())?;
        if placement.max_replicas_per_node > 0
            && matches!(spec.mode, Some(shoal_proto::service_spec::Mode::Global(_)))
        {
            return Err(
                "max replicas per node applies to replicated services only: a global service \
                 runs one task per node already"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::service_spec::Mode;
    use shoal_proto::{ContainerSpec, ReplicatedService, Resources};

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            container: Some(ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_docker() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-web"));
        assert!(!valid_name(""));
        assert!(!valid_name("we b"));
    }

    #[test]
    fn specs_are_checked() {
        assert!(validate_spec(&spec()).is_ok());
        let mut s = spec();
        s.limits = Some(Resources {
            memory_bytes: 1024,
            ..Default::default()
        });
        assert!(validate_spec(&s).unwrap_err().contains("too small"));
        let mut s = spec();
        s.container = Some(ContainerSpec::default());
        assert!(validate_spec(&s).unwrap_err().contains("no image"));
    }

    #[test]
    fn placements_are_checked() {
        let mut s = spec();
        s.placement = Some(shoal_proto::Placement {
            constraints: vec!["node.labels.zone==a".into()],
            preferences: vec![shoal_proto::PlacementPreference {
                spread: "node.labels.zone".into(),
            }],
            max_replicas_per_node: 2,
        });
        assert!(validate_spec(&s).is_ok());
        let mut bad = s.clone();
        bad.placement.as_mut().unwrap().constraints = vec!["node.zone==a".into()];
        let err = validate_spec(&bad).unwrap_err();
        assert!(
            err.contains("invalid placement \"node.zone==a\": unknown key"),
            "{err}"
        );
        let mut bad = s.clone();
        bad.placement.as_mut().unwrap().preferences[0].spread = "engine.labels.x".into();
        assert!(validate_spec(&bad).unwrap_err().contains("engine labels"));
        let mut global = s;
        global.mode = Some(Mode::Global(shoal_proto::GlobalService {}));
        assert!(validate_spec(&global)
            .unwrap_err()
            .contains("replicated services only"));
    }
}
