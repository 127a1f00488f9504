//! Merging of compose files (several `-f`, `extends`) by the compose-spec rules, on YAML trees:
//! mappings merge key by key, sequences append (exact duplicate scalars dropped), scalars are
//! replaced; `command`, `entrypoint` and `healthcheck.test` are replaced; `ports`, `volumes`,
//! `secrets` and `configs` merge on their unique key; list-or-mapping attributes
//! (`environment`, `labels`, ...) are merged as mappings. `!reset` drops the inherited value,
//! `!override` replaces it without merging.

use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use super::convert;
use super::error::{ComposeError, Result};

/// Service attributes that may be a list of `KEY=VALUE` or a mapping; merged as mappings.
const LIST_OR_MAP: &[&str] = &["environment", "labels", "annotations", "sysctls"];

fn is_tag(t: &TaggedValue, name: &str) -> bool {
    t.tag == Tag::new(name)
}

/// Merges two whole (per-file) compose trees: `over` wins.
pub fn merge_project(base: Value, over: Value) -> Result<Value> {
    let (Value::Mapping(mut base), Value::Mapping(over)) = (base, over) else {
        return Err(ComposeError::at("", "a compose file must be a mapping"));
    };
    for (key, value) in over {
        let name = super::yaml::key_string(&key);
        if value.is_null() && base.contains_key(&key) {
            continue; // an empty `services:` adds nothing
        }
        if let Value::Tagged(t) = &value {
            if is_tag(t, "reset") {
                base.remove(&key);
                continue;
            }
            if is_tag(t, "override") {
                base.insert(key, t.value.clone());
                continue;
            }
        }
        let merged = match (name.as_str(), base.remove(&key)) {
            (_, None) => value,
            ("services", Some(Value::Mapping(mut b))) => {
                let Value::Mapping(o) = value else {
                    return Err(ComposeError::at(
                        "services",
                        "expected a mapping of services",
                    ));
                };
                for (svc, def) in o {
                    let merged = match (b.remove(&svc), def) {
                        (_, Value::Tagged(t)) if is_tag(&t, "reset") => continue,
                        (_, Value::Tagged(t)) if is_tag(&t, "override") => t.value,
                        (Some(old), def) => merge_service(old, def)?,
                        (None, def) => def,
                    };
                    b.insert(svc, merged);
                }
                Value::Mapping(b)
            }
            ("networks" | "volumes" | "secrets" | "configs", Some(b)) => merge_generic(b, value),
            (_, Some(b)) => merge_generic(b, value),
        };
        base.insert(key, merged);
    }
    Ok(Value::Mapping(base))
}

/// Brings a service definition to the shapes the merge rules work on: `build: ctx` becomes
/// `build: {context: ctx}`, list-or-mapping attributes become mappings, `depends_on` and
/// `networks` lists become mappings.
pub fn expand_service(service: &mut Value) {
    let Value::Mapping(m) = service else { return };
    if let Some(Value::String(ctx)) = m.get("build") {
        let mut b = Mapping::new();
        b.insert("context".into(), Value::String(ctx.clone()));
        m.insert("build".into(), Value::Mapping(b));
    }
    for key in LIST_OR_MAP {
        if let Some(v) = m.get_mut(*key) {
            list_to_map(v, true);
        }
    }
    for key in ["depends_on", "networks"] {
        if let Some(v) = m.get_mut(key) {
            list_to_map(v, false);
        }
    }
    for (outer, inner) in [("build", "args"), ("build", "labels"), ("deploy", "labels")] {
        if let Some(Value::Mapping(o)) = m.get_mut(outer) {
            if let Some(v) = o.get_mut(inner) {
                list_to_map(v, true);
            }
        }
    }
}

/// `[A=1, B]` → `{A: "1", B: null}` (with `split`), `[a, b]` → `{a: null, b: null}`.
fn list_to_map(value: &mut Value, split: bool) {
    let target = match value {
        Value::Tagged(t) => &mut t.value,
        v => v,
    };
    let Value::Sequence(seq) = target else { return };
    if !seq.iter().all(|v| matches!(v, Value::String(_))) {
        return; // left for the typed phase to report
    }
    let mut m = Mapping::new();
    for item in seq.iter() {
        let Value::String(s) = item else { continue };
        match s.split_once('=').filter(|_| split) {
            Some((k, v)) => m.insert(k.into(), v.into()),
            None => m.insert(s.as_str().into(), Value::Null),
        };
    }
    *target = Value::Mapping(m);
}

/// Merges two service definitions: `over` wins.
pub fn merge_service(mut base: Value, mut over: Value) -> Result<Value> {
    if over.is_null() {
        return Ok(base);
    }
    expand_service(&mut base);
    expand_service(&mut over);
    let (Value::Mapping(mut b), Value::Mapping(o)) = (base, over) else {
        return Ok(Value::Null); // reported by the typed phase
    };
    for (key, value) in o {
        let name = super::yaml::key_string(&key);
        if let Value::Tagged(t) = &value {
            if is_tag(t, "reset") {
                b.remove(&key);
                continue;
            }
            if is_tag(t, "override") {
                b.insert(key, t.value.clone());
                continue;
            }
        }
        let merged = match (name.as_str(), b.remove(&key)) {
            (_, None) => value,
            ("command" | "entrypoint", Some(_)) => value,
            ("healthcheck", Some(old)) => {
                let mut old = old;
                if let (Value::Mapping(om), Value::Mapping(nm)) = (&mut old, &value) {
                    if nm.contains_key("test") {
                        om.remove("test");
                    }
                }
                merge_generic(old, value)
            }
            ("ports", Some(old)) => merge_unique(old, value, convert::port_merge_key),
            ("volumes", Some(old)) => merge_unique(old, value, convert::volume_merge_key),
            ("secrets" | "configs", Some(old)) => {
                merge_unique(old, value, convert::file_ref_merge_key)
            }
            (_, Some(old)) => merge_generic(old, value),
        };
        b.insert(key, merged);
    }
    Ok(Value::Mapping(b))
}

/// Sequences whose entries have a unique key: an overriding entry replaces the one with the same
/// key, others are appended.
fn merge_unique(base: Value, over: Value, key: fn(&Value) -> Option<String>) -> Value {
    let (Value::Sequence(mut b), Value::Sequence(o)) = (base, over.clone()) else {
        return over;
    };
    for item in o {
        let k = key(&item);
        match b.iter().position(|x| k.is_some() && key(x) == k) {
            Some(i) => b[i] = item,
            None => b.push(item),
        }
    }
    Value::Sequence(b)
}

/// The default rules: mappings merge recursively, sequences append, the rest is replaced.
pub fn merge_generic(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                if let Value::Tagged(t) = &v {
                    if is_tag(t, "reset") {
                        b.remove(&k);
                        continue;
                    }
                    if is_tag(t, "override") {
                        b.insert(k, t.value.clone());
                        continue;
                    }
                }
                let merged = match b.remove(&k) {
                    Some(old) => merge_generic(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (Value::Sequence(mut b), Value::Sequence(o)) => {
            for item in o {
                let scalar = !matches!(item, Value::Mapping(_) | Value::Sequence(_));
                if !(scalar && b.contains(&item)) {
                    b.push(item);
                }
            }
            Value::Sequence(b)
        }
        (_, over) => over,
    }
}

/// Removes what is left of `!reset` (the key goes) and `!override` (the tag goes) once there is
/// nothing more to merge; any other tag is an error.
pub fn strip_tags(value: &mut Value, path: &str) -> Result<()> {
    match value {
        Value::Mapping(m) => {
            let keys: Vec<Value> = m.keys().cloned().collect();
            for k in keys {
                let child = child_path(path, &super::yaml::key_string(&k));
                let v = m.get_mut(&k).expect("key just listed");
                if let Value::Tagged(t) = v {
                    if is_tag(t, "reset") {
                        m.remove(&k);
                        continue;
                    }
                }
                strip_tags(v, &child)?;
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter_mut().enumerate() {
                strip_tags(v, &format!("{path}[{i}]"))?;
            }
        }
        Value::Tagged(t) => {
            if is_tag(t, "override") {
                let mut inner = std::mem::take(&mut t.value);
                strip_tags(&mut inner, path)?;
                *value = inner;
            } else if is_tag(t, "reset") {
                *value = Value::Null;
            } else {
                return Err(ComposeError::at(
                    path,
                    format!(
                        "unsupported YAML tag {}: only !reset and !override are known",
                        t.tag
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
