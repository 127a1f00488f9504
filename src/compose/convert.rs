//! From the merged YAML tree to the typed [`Project`]: every short syntax to its long form,
//! unknown keys refused, values checked, relative paths made absolute.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::error::{ComposeError, Result};
use super::interp::{parse_dotenv, Lookup};
use super::merge::{child_path, expand_service};
use super::model::*;
use super::yaml::key_string;
use super::FileSystem;

/// Valid compose attributes that shoal does not support yet: an error naming the key, except
/// the ones marked as ignored (a warning).
pub const UNSUPPORTED_SERVICE_KEYS: &[(&str, bool)] = &[
    ("develop", true),
    ("attach", true),
    ("gpus", false),
    ("blkio_config", false),
    ("credential_spec", false),
    ("device_cgroup_rules", false),
    ("cgroup", false),
    ("cpu_count", false),
    ("cpu_percent", false),
    ("cpu_period", false),
    ("cpu_quota", false),
    ("cpu_rt_period", false),
    ("cpu_rt_runtime", false),
    ("cpuset", false),
    ("isolation", false),
    ("label_file", false),
    ("mem_swappiness", false),
    ("oom_kill_disable", false),
    ("storage_opt", false),
    ("uts", false),
    ("models", false),
    ("provider", false),
    ("post_start", false),
    ("pre_stop", false),
    ("use_api_socket", false),
];

const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "volumes_from",
    "depends_on",
    "links",
    "external_links",
    "restart",
    "networks",
    "network_mode",
    "healthcheck",
    "container_name",
    "hostname",
    "domainname",
    "deploy",
    "secrets",
    "configs",
    "user",
    "group_add",
    "working_dir",
    "labels",
    "annotations",
    "logging",
    "tmpfs",
    "read_only",
    "privileged",
    "init",
    "tty",
    "stdin_open",
    "security_opt",
    "cap_add",
    "cap_drop",
    "devices",
    "dns",
    "dns_search",
    "dns_opt",
    "stop_signal",
    "stop_grace_period",
    "ulimits",
    "sysctls",
    "extra_hosts",
    "pids_limit",
    "shm_size",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "cpus",
    "cpu_shares",
    "oom_score_adj",
    "ipc",
    "pid",
    "userns_mode",
    "cgroup_parent",
    "mac_address",
    "runtime",
    "profiles",
    "scale",
    "pull_policy",
    "platform",
];

/// What the typed phase needs besides the tree.
pub struct Ctx<'a> {
    pub project_name: &'a str,
    pub project_dir: &'a Path,
    pub env: &'a dyn Lookup,
    pub fs: &'a dyn FileSystem,
    pub warnings: &'a mut Vec<String>,
}

fn err(path: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::at(path, message)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Strings, numbers and booleans as text (Compose casts them the same way).
pub fn scalar(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(err(path, format!("expected a string, got {}", kind(other)))),
    }
}

fn boolean(v: &Value, path: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => Ok(true),
            "false" | "no" | "n" | "off" => Ok(false),
            _ => Err(err(path, format!("expected a boolean, got {s:?}"))),
        },
        other => Err(err(
            path,
            format!("expected a boolean, got {}", kind(other)),
        )),
    }
}

fn int(v: &Value, path: &str) -> Result<i64> {
    match v {
        Value::Number(n) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
        Value::String(s) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().unwrap_or(0)),
        Value::String(s) => Err(err(path, format!("expected a whole number, got {s:?}"))),
        other => Err(err(
            path,
            format!("expected a whole number, got {}", kind(other)),
        )),
    }
}

fn uint(v: &Value, path: &str) -> Result<u64> {
    let n = int(v, path)?;
    u64::try_from(n).map_err(|_| err(path, format!("expected a number 0 or more, got {n}")))
}

fn float(v: &Value, path: &str) -> Result<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(err(
            path,
            format!("expected a number 0 or more, got {}", show(v)),
        )),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

/// Durations like Compose: `1m30s`, `10s`, `500ms`, `2h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 500ms, 10s, 1m30s");
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = t;
    let mut first = true;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        if number.is_empty() {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "" if first && next.is_empty() => 1_000_000_000,
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(bad)?;
        let mut scale = unit_nanos;
        for d in frac.chars() {
            scale /= 10;
            nanos += u128::from(d.to_digit(10).ok_or_else(bad)?) * scale;
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
        rest = next;
        first = false;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

fn duration(v: &Value, path: &str) -> Result<Dur> {
    let text = scalar(v, path)?;
    parse_duration(&text).map(Dur).map_err(|e| err(path, e))
}

fn bytes(v: &Value, path: &str) -> Result<i64> {
    if let Value::Number(n) = v {
        return n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| err(path, format!("invalid size {n}")));
    }
    let text = scalar(v, path)?;
    crate::units::parse_bytes(&text).map_err(|e| err(path, e))
}

/// Closest allowed key, for "did you mean".
fn suggestion(key: &str, allowed: &[&str]) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    allowed
        .iter()
        .map(|a| (distance(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a.to_string())
}

/// A mapping whose keys are checked against `allowed` (`x-*` extensions always pass).
struct Fields<'v> {
    map: &'v Mapping,
    path: String,
}

impl<'v> Fields<'v> {
    fn new(v: &'v Value, path: &str, allowed: &[&str]) -> Result<Fields<'v>> {
        let Value::Mapping(map) = v else {
            return Err(err(path, format!("expected a mapping, got {}", kind(v))));
        };
        for key in map.keys() {
            let k = key_string(key);
            if k.starts_with("x-") || allowed.contains(&k.as_str()) {
                continue;
            }
            let mut message = format!("unknown key {k:?}");
            if let Some(s) = suggestion(&k, allowed) {
                message.push_str(&format!(" (did you mean {s:?}?)"));
            } else if allowed.len() <= 12 {
                message.push_str(&format!("; expected one of: {}", allowed.join(", ")));
            } else {
                message.push_str("; not a compose attribute here");
            }
            return Err(err(&child_path(path, &k), message));
        }
        Ok(Fields {
            map,
            path: path.to_string(),
        })
    }

    fn path(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// The value of `key`, absent when missing or null.
    fn get(&self, key: &str) -> Option<(&'v Value, String)> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some((v, self.path(key))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|(v, p)| scalar(v, &p)).transpose()
    }

    fn bool(&self, key: &str) -> Result<bool> {
        Ok(self.opt_bool(key)?.unwrap_or(false))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|(v, p)| boolean(v, &p)).transpose()
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        self.get(key).map(|(v, p)| int(v, &p)).transpose()
    }

    fn uint(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|(v, p)| uint(v, &p)).transpose()
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|(v, p)| float(v, &p)).transpose()
    }

    fn dur(&self, key: &str) -> Result<Option<Dur>> {
        self.get(key).map(|(v, p)| duration(v, &p)).transpose()
    }

    fn bytes(&self, key: &str) -> Result<Option<i64>> {
        self.get(key).map(|(v, p)| bytes(v, &p)).transpose()
    }

    /// A string or a list of strings.
    fn strs(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some((v, p)) => str_list(v, &p),
        }
    }

    /// `[K=V, ...]` or `{K: V}`; values that are null stay `None`.
    fn map_opt(&self, key: &str) -> Result<BTreeMap<String, Option<String>>> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some((v, p)) => list_or_map(v, &p),
        }
    }

    /// Like `map_opt`, null values become empty strings.
    fn map(&self, key: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .map_opt(key)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect())
    }

    fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<String>> {
        let Some(v) = self.str(key)? else {
            return Ok(None);
        };
        if allowed.contains(&v.as_str()) {
            Ok(Some(v))
        } else {
            Err(err(
                &self.path(key),
                format!(
                    "invalid value {v:?}; expected one of: {}",
                    allowed.join(", ")
                ),
            ))
        }
    }
}

fn str_list(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Sequence(seq) => seq
            .iter()
            .enumerate()
            .map(|(i, v)| scalar(v, &format!("{path}[{i}]")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        v => Ok(vec![scalar(v, path)?]),
    }
}

fn list_or_map(v: &Value, path: &str) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(seq) => {
            for (i, item) in seq.iter().enumerate() {
                let s = scalar(item, &format!("{path}[{i}]"))?;
                match s.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(s, None),
                };
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = key_string(k);
                let value = match v {
                    Value::Null => None,
                    v => Some(scalar(v, &child_path(path, &key))?),
                };
                out.insert(key, value);
            }
        }
        other => {
            return Err(err(
                path,
                format!(
                    "expected a list of KEY=VALUE or a mapping, got {}",
                    kind(other)
                ),
            ))
        }
    }
    Ok(out)
}

/// Splits a command line like a POSIX shell (quotes and backslashes, no expansion).
pub fn shell_split(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {text:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => word.push(c),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn command(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Sequence(_) => str_list(v, path),
        v => shell_split(&scalar(v, path)?).map_err(|e| err(path, e)),
    }
}

/// Lexically cleans a path: drops `.`, folds `..`.
pub fn clean_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

impl Ctx<'_> {
    /// A host path from the file: `~` is the home directory, relative is from the project dir.
    fn host_path(&self, p: &str) -> String {
        let expanded = if p == "~" || p.starts_with("~/") {
            match self.env.get("HOME") {
                Some(home) => format!("{home}{}", &p[1..]),
                None => p.to_string(),
            }
        } else {
            p.to_string()
        };
        clean_path(&self.project_dir.join(expanded))
            .to_string_lossy()
            .into_owned()
    }
}

fn is_remote_context(ctx: &str) -> bool {
    ctx.contains("://") || ctx.starts_with("git@") || ctx.starts_with("github.com/")
}

/// Named volume or host path? Short syntax decides by the first character, like Compose.
fn is_host_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

// ---------------------------------------------------------------------------------------------
// ports

fn port_number(text: &str, what: &str) -> std::result::Result<u16, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("{what} {text:?} is not a port number (1-65535)")),
    }
}

fn port_range(text: &str, what: &str) -> std::result::Result<(u16, u16), String> {
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a, what)?, port_number(b, what)?);
            if a > b {
                return Err(format!("{what} range {text:?} ends before it starts"));
            }
            Ok((a, b))
        }
        None => {
            let n = port_number(text, what)?;
            Ok((n, n))
        }
    }
}

/// `[[host_ip:]published:]target[/protocol]`, with ranges; one entry per target port.
pub fn parse_port(spec: &str) -> std::result::Result<Vec<Port>, String> {
    let inner = || -> std::result::Result<Vec<Port>, String> {
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((r, p)) => (r, p.to_string()),
            None => (spec, "tcp".to_string()),
        };
        if !["tcp", "udp", "sctp"].contains(&protocol.as_str()) {
            return Err(format!("unknown protocol {protocol:?} (tcp, udp or sctp)"));
        }
        let (host_ip, published, target) = if let Some(after) = rest.strip_prefix('[') {
            let (ip, tail) = after
                .split_once(']')
                .ok_or("unclosed [ around the IPv6 address")?;
            let tail = tail
                .strip_prefix(':')
                .ok_or("expected : after the IPv6 address")?;
            let (p, t) = tail
                .split_once(':')
                .ok_or("expected published:target after the address")?;
            (Some(ip.to_string()), p, t)
        } else {
            let mut parts = rest.rsplitn(3, ':');
            let target = parts.next().unwrap_or_default();
            let published = parts.next().unwrap_or_default();
            let ip = parts.next().map(str::to_string);
            (ip, published, target)
        };
        if host_ip.as_deref() == Some("") {
            return Err("empty host IP".into());
        }
        if let Some(ip) = &host_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("invalid host IP {ip:?}"));
            }
        }
        let (t0, t1) = port_range(target, "container port")?;
        let published = (!published.is_empty())
            .then(|| port_range(published, "host port"))
            .transpose()?;
        let count = t1 - t0;
        let mut out = Vec::new();
        for i in 0..=count {
            let published = match published {
                None => None,
                Some((p0, p1)) if count == 0 => Some(if p0 == p1 {
                    p0.to_string()
                } else {
                    format!("{p0}-{p1}")
                }),
                Some((p0, p1)) if p1 - p0 == count => Some((p0 + i).to_string()),
                Some(_) => return Err("host and container port ranges differ in size".to_string()),
            };
            out.push(Port {
                name: None,
                target: t0 + i,
                published,
                host_ip: host_ip.clone(),
                protocol: protocol.clone(),
                app_protocol: None,
                mode: "ingress".into(),
            });
        }
        Ok(out)
    };
    inner().map_err(|e| format!("invalid port {spec:?}: {e}"))
}

fn port_long(v: &Value, path: &str) -> Result<Port> {
    let f = Fields::new(
        v,
        path,
        &[
            "name",
            "target",
            "published",
            "host_ip",
            "protocol",
            "app_protocol",
            "mode",
        ],
    )?;
    let target = f
        .str("target")?
        .ok_or_else(|| err(path, "a port needs a target"))?;
    let target = port_number(&target, "container port").map_err(|e| err(&f.path("target"), e))?;
    let published = f.str("published")?;
    if let Some(p) = &published {
        port_range(p, "host port").map_err(|e| err(&f.path("published"), e))?;
    }
    Ok(Port {
        name: f.str("name")?,
        target,
        published,
        host_ip: f.str("host_ip")?,
        protocol: f
            .one_of("protocol", &["tcp", "udp", "sctp"])?
            .unwrap_or("tcp".into()),
        app_protocol: f.str("app_protocol")?,
        mode: f
            .one_of("mode", &["ingress", "host"])?
            .unwrap_or("ingress".into()),
    })
}

/// The merge key of a port entry: `{ip, target, published, protocol}`.
pub fn port_merge_key(v: &Value) -> Option<String> {
    let ports = match v {
        Value::Mapping(_) => vec![port_long(v, "").ok()?],
        v => parse_port(&scalar(v, "").ok()?).ok()?,
    };
    let p = ports.first()?;
    Some(format!(
        "{:?}/{}/{:?}/{}",
        p.host_ip, p.target, p.published, p.protocol
    ))
}

// ---------------------------------------------------------------------------------------------
// volumes

/// `[SOURCE:]TARGET[:MODE]`.
pub fn volume_short(spec: &str, path: &str, ctx: &Ctx) -> Result<ServiceVolume> {
    let bad = |m: &str| err(path, format!("invalid volume {spec:?}: {m}"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(bad("expected [SOURCE:]TARGET[:MODE]")),
    };
    if target.is_empty() || !target.starts_with('/') {
        return Err(bad("the target must be an absolute path in the container"));
    }
    let mut vol = ServiceVolume {
        target: target.to_string(),
        ..Default::default()
    };
    match source {
        None => vol.kind = "volume".into(),
        Some("") => return Err(bad("empty source")),
        Some(s) if is_host_path(s) => {
            vol.kind = "bind".into();
            vol.source = Some(ctx.host_path(s));
            vol.bind = Some(BindOptions {
                create_host_path: true,
                ..Default::default()
            });
        }
        Some(s) => {
            vol.kind = "volume".into();
            vol.source = Some(s.to_string());
        }
    }
    for option in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => vol.read_only = true,
            "rw" => vol.read_only = false,
            "z" | "Z" if vol.kind == "bind" => {
                vol.bind.get_or_insert_with(Default::default).selinux = Some(option.into())
            }
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate"
                if vol.kind == "bind" =>
            {
                vol.bind.get_or_insert_with(Default::default).propagation = Some(option.into())
            }
            "nocopy" if vol.kind == "volume" => {
                vol.volume.get_or_insert_with(Default::default).nocopy = true
            }
            "consistent" | "cached" | "delegated" => vol.consistency = Some(option.into()),
            other => {
                return Err(bad(&format!(
                    "unknown mode {other:?} for a {} mount",
                    vol.kind
                )))
            }
        }
    }
    Ok(vol)
}

fn volume_long(v: &Value, path: &str, ctx: &Ctx) -> Result<ServiceVolume> {
    let f = Fields::new(
        v,
        path,
        &[
            "type",
            "source",
            "target",
            "read_only",
            "consistency",
            "bind",
            "volume",
            "tmpfs",
            "image",
        ],
    )?;
    let kind = f
        .one_of(
            "type",
            &["bind", "volume", "tmpfs", "npipe", "image", "cluster"],
        )?
        .ok_or_else(|| err(path, "a volume needs a type (bind, volume, tmpfs, ...)"))?;
    let target = f
        .str("target")?
        .ok_or_else(|| err(path, "a volume needs a target"))?;
    let mut source = f.str("source")?;
    if kind == "bind" {
        let s = source
            .as_deref()
            .ok_or_else(|| err(path, "a bind mount needs a source"))?;
        source = Some(ctx.host_path(s));
    }
    if kind == "tmpfs" && source.is_some() {
        return Err(err(&f.path("source"), "a tmpfs mount has no source"));
    }
    let bind = match f.get("bind") {
        None => None,
        Some((b, p)) => {
            let b = Fields::new(b, &p, &["propagation", "create_host_path", "selinux"])?;
            Some(BindOptions {
                propagation: b.one_of(
                    "propagation",
                    &[
                        "shared", "rshared", "slave", "rslave", "private", "rprivate",
                    ],
                )?,
                create_host_path: b.bool("create_host_path")?,
                selinux: b.one_of("selinux", &["z", "Z"])?,
            })
        }
    };
    let volume = match f.get("volume") {
        None => None,
        Some((b, p)) => {
            let b = Fields::new(b, &p, &["nocopy", "subpath"])?;
            Some(VolumeOptions {
                nocopy: b.bool("nocopy")?,
                subpath: b.str("subpath")?,
            })
        }
    };
    let tmpfs = match f.get("tmpfs") {
        None => None,
        Some((b, p)) => {
            let b = Fields::new(b, &p, &["size", "mode"])?;
            let mode = match b.get("mode") {
                None => None,
                Some((v, p)) => Some(file_mode(v, &p)?),
            };
            Some(TmpfsOptions {
                size: b.bytes("size")?,
                mode,
            })
        }
    };
    Ok(ServiceVolume {
        kind,
        source,
        target,
        read_only: f.bool("read_only")?,
        consistency: f.str("consistency")?,
        bind,
        volume,
        tmpfs,
    })
}

/// The merge key of a volume entry: its target.
pub fn volume_merge_key(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(m) => m.get("target").and_then(|t| scalar(t, "").ok()),
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [t] | [_, t] | [_, t, _] => Some(t.to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The merge key of a secret or config use: its target, or its source.
pub fn file_ref_merge_key(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(m) => m
            .get("target")
            .or_else(|| m.get("source"))
            .and_then(|t| scalar(t, "").ok()),
        v => scalar(v, "").ok(),
    }
}

/// `0440` (a string, octal) or 288 (a number, as written).
fn file_mode(v: &Value, path: &str) -> Result<u32> {
    match v {
        Value::String(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
            err(
                path,
                format!("invalid file mode {s:?}: use octal such as 0440"),
            )
        }),
        v => {
            let n = uint(v, path)?;
            u32::try_from(n).map_err(|_| err(path, format!("invalid file mode {n}")))
        }
    }
}

fn file_ref(v: &Value, path: &str) -> Result<FileRef> {
    if !matches!(v, Value::Mapping(_)) {
        return Ok(FileRef {
            source: scalar(v, path)?,
            target: None,
            uid: None,
            gid: None,
            mode: None,
        });
    }
    let f = Fields::new(v, path, &["source", "target", "uid", "gid", "mode"])?;
    Ok(FileRef {
        source: f
            .str("source")?
            .ok_or_else(|| err(path, "missing source"))?,
        target: f.str("target")?,
        uid: f.str("uid")?,
        gid: f.str("gid")?,
        mode: f.get("mode").map(|(v, p)| file_mode(v, &p)).transpose()?,
    })
}

fn seq<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>> {
    match v {
        Value::Sequence(s) => Ok(s),
        other => Err(err(path, format!("expected a list, got {}", kind(other)))),
    }
}

// ---------------------------------------------------------------------------------------------
// services

pub fn service(name: &str, value: &Value, ctx: &mut Ctx) -> Result<Service> {
    let path = format!("services.{name}");
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || name.is_empty()
    {
        return Err(err(
            &path,
            format!("invalid service name {name:?}: use letters, digits, '.', '_' and '-'"),
        ));
    }
    let mut value = value.clone();
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    expand_service(&mut value);
    if let Value::Mapping(m) = &mut value {
        if m.contains_key("extends") {
            return Err(err(
                &format!("{path}.extends"),
                "extends could not be resolved",
            ));
        }
        for (key, ignored) in UNSUPPORTED_SERVICE_KEYS {
            if m.contains_key(*key) {
                if *ignored {
                    ctx.warnings
                        .push(format!("{path}.{key}: not supported by shoal, ignored"));
                    m.remove(*key);
                } else {
                    return Err(err(
                        &format!("{path}.{key}"),
                        format!(
                            "{key:?} is a valid compose attribute that shoal does not support yet"
                        ),
                    ));
                }
            }
        }
    }
    let f = Fields::new(&value, &path, SERVICE_KEYS)?;
    let mut s = Service {
        image: f.str("image")?,
        container_name: f.str("container_name")?,
        hostname: f.str("hostname")?,
        domainname: f.str("domainname")?,
        user: f.str("user")?,
        group_add: f.strs("group_add")?,
        working_dir: f.str("working_dir")?,
        network_mode: f.str("network_mode")?,
        stop_signal: f.str("stop_signal")?,
        stop_grace_period: f.dur("stop_grace_period")?,
        expose: f.strs("expose")?,
        volumes_from: f.strs("volumes_from")?,
        links: f.strs("links")?,
        external_links: f.strs("external_links")?,
        labels: f.map("labels")?,
        annotations: f.map("annotations")?,
        tmpfs: f.strs("tmpfs")?,
        read_only: f.bool("read_only")?,
        privileged: f.bool("privileged")?,
        init: f.opt_bool("init")?,
        tty: f.bool("tty")?,
        stdin_open: f.bool("stdin_open")?,
        security_opt: f.strs("security_opt")?,
        cap_add: f.strs("cap_add")?,
        cap_drop: f.strs("cap_drop")?,
        devices: f.strs("devices")?,
        dns: f.strs("dns")?,
        dns_search: f.strs("dns_search")?,
        dns_opt: f.strs("dns_opt")?,
        sysctls: f.map("sysctls")?,
        pids_limit: f.int("pids_limit")?,
        shm_size: f.bytes("shm_size")?,
        mem_limit: f.bytes("mem_limit")?,
        mem_reservation: f.bytes("mem_reservation")?,
        memswap_limit: f
            .int("memswap_limit")
            .or_else(|_| f.bytes("memswap_limit"))?,
        cpus: f.float("cpus")?,
        cpu_shares: f.int("cpu_shares")?,
        oom_score_adj: f.int("oom_score_adj")?,
        ipc: f.str("ipc")?,
        pid: f.str("pid")?,
        userns_mode: f.str("userns_mode")?,
        cgroup_parent: f.str("cgroup_parent")?,
        mac_address: f.str("mac_address")?,
        runtime: f.str("runtime")?,
        profiles: f.strs("profiles")?,
        scale: f.uint("scale")?,
        platform: f.str("platform")?,
        ..Default::default()
    };
    for (i, e) in s.expose.iter().enumerate() {
        let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        if port_range(port, "port").is_err() || !["tcp", "udp", "sctp"].contains(&proto) {
            return Err(err(
                &format!("{path}.expose[{i}]"),
                format!("invalid port {e:?}: expected PORT[-PORT][/PROTOCOL]"),
            ));
        }
    }
    if let Some((v, p)) = f.get("command") {
        s.command = Some(command(v, &p)?);
    }
    if let Some((v, p)) = f.get("entrypoint") {
        s.entrypoint = Some(command(v, &p)?);
    }
    if let Some((v, p)) = f.get("build") {
        s.build = Some(build(v, &p, ctx)?);
    }
    if s.image.is_none() && s.build.is_none() {
        return Err(err(&path, "a service needs an image or a build section"));
    }
    // env_file first, environment wins.
    if let Some((v, p)) = f.get("env_file") {
        s.env_file = env_files(v, &p, ctx)?;
        for (i, ef) in s.env_file.iter().enumerate() {
            let text = match ctx.fs.read(Path::new(&ef.path)) {
                Ok(t) => t,
                Err(_) if !ef.required => continue,
                Err(e) => {
                    return Err(err(
                        &format!("{p}[{i}]"),
                        format!("cannot read env file {}: {e}", ef.path),
                    ))
                }
            };
            for (k, v) in parse_dotenv(&text, ctx.env)
                .map_err(|e| err(&format!("{p}[{i}]"), format!("env file {}: {e}", ef.path)))?
            {
                s.environment.insert(k, v);
            }
        }
    }
    for (k, v) in f.map_opt("environment")? {
        match v.or_else(|| ctx.env.get(&k)) {
            Some(v) => s.environment.insert(k, v),
            None => s.environment.remove(&k),
        };
    }
    if let Some((v, p)) = f.get("ports") {
        for (i, item) in seq(v, &p)?.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match item {
                Value::Mapping(_) => s.ports.push(port_long(item, &ip)?),
                item => s
                    .ports
                    .extend(parse_port(&scalar(item, &ip)?).map_err(|e| err(&ip, e))?),
            }
        }
    }
    if let Some((v, p)) = f.get("volumes") {
        for (i, item) in seq(v, &p)?.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            s.volumes.push(match item {
                Value::Mapping(_) => volume_long(item, &ip, ctx)?,
                item => volume_short(&scalar(item, &ip)?, &ip, ctx)?,
            });
        }
    }
    for key in ["secrets", "configs"] {
        if let Some((v, p)) = f.get(key) {
            let refs = seq(v, &p)?
                .iter()
                .enumerate()
                .map(|(i, item)| file_ref(item, &format!("{p}[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            if key == "secrets" {
                s.secrets = refs;
            } else {
                s.configs = refs;
            }
        }
    }
    if let Some((v, p)) = f.get("depends_on") {
        s.depends_on = depends_on(v, &p)?;
    }
    if let Some((v, p)) = f.get("networks") {
        s.networks = service_networks(v, &p)?;
    }
    if s.network_mode.is_some() && !s.networks.is_empty() {
        return Err(err(
            &f.path("networks"),
            "network_mode and networks cannot both be set",
        ));
    }
    s.restart = f.str("restart")?;
    if let Some(r) = &s.restart {
        let ok = matches!(
            r.as_str(),
            "no" | "always" | "on-failure" | "unless-stopped"
        ) || r
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            return Err(err(&f.path("restart"), format!("invalid restart policy {r:?}; expected no, always, on-failure[:N] or unless-stopped")));
        }
    }
    s.pull_policy = f.str("pull_policy")?;
    if let Some(pp) = &s.pull_policy {
        let ok = matches!(
            pp.as_str(),
            "always" | "never" | "missing" | "if_not_present" | "build" | "daily" | "weekly"
        ) || pp
            .strip_prefix("every_")
            .is_some_and(|d| parse_duration(d).is_ok());
        if !ok {
            return Err(err(&f.path("pull_policy"), format!("invalid pull policy {pp:?}; expected always, never, missing, build, daily, weekly or every_<duration>")));
        }
    }
    if let Some((v, p)) = f.get("healthcheck") {
        s.healthcheck = Some(healthcheck(v, &p)?);
    }
    if let Some((v, p)) = f.get("deploy") {
        s.deploy = Some(deploy(v, &p)?);
    }
    if let Some((v, p)) = f.get("logging") {
        let l = Fields::new(v, &p, &["driver", "options"])?;
        s.logging = Some(Logging {
            driver: l.str("driver")?,
            options: l.map("options")?,
        });
    }
    if let Some((v, p)) = f.get("ulimits") {
        let Value::Mapping(m) = v else {
            return Err(err(&p, format!("expected a mapping, got {}", kind(v))));
        };
        for (k, lim) in m {
            let k = key_string(k);
            let lp = child_path(&p, &k);
            let u = match lim {
                Value::Mapping(_) => {
                    let l = Fields::new(lim, &lp, &["soft", "hard"])?;
                    let soft = l.int("soft")?.ok_or_else(|| err(&lp, "missing soft"))?;
                    let hard = l.int("hard")?.ok_or_else(|| err(&lp, "missing hard"))?;
                    Ulimit { soft, hard }
                }
                v => {
                    let n = int(v, &lp)?;
                    Ulimit { soft: n, hard: n }
                }
            };
            if u.soft > u.hard && u.hard >= 0 {
                return Err(err(
                    &lp,
                    format!("soft limit {} is above hard limit {}", u.soft, u.hard),
                ));
            }
            s.ulimits.insert(k, u);
        }
    }
    if let Some((v, p)) = f.get("extra_hosts") {
        s.extra_hosts = extra_hosts(v, &p)?;
    }
    let replicas = s.scale.or(s.deploy.as_ref().and_then(|d| d.replicas));
    if s.container_name.is_some() && replicas.is_some_and(|n| n > 1) {
        return Err(err(
            &f.path("container_name"),
            "a container name must be unique: it cannot be set with more than one replica",
        ));
    }
    if let (Some(scale), Some(replicas)) = (s.scale, s.deploy.as_ref().and_then(|d| d.replicas)) {
        if scale != replicas {
            return Err(err(
                &f.path("scale"),
                format!("scale {scale} differs from deploy.replicas {replicas}"),
            ));
        }
    }
    Ok(s)
}

fn build(v: &Value, path: &str, ctx: &Ctx) -> Result<Build> {
    let context = |c: &str| {
        if is_remote_context(c) {
            c.to_string()
        } else {
            ctx.host_path(c)
        }
    };
    if !matches!(v, Value::Mapping(_)) {
        return Ok(Build {
            context: context(&scalar(v, path)?),
            ..Default::default()
        });
    }
    let f = Fields::new(
        v,
        path,
        &[
            "context",
            "dockerfile",
            "dockerfile_inline",
            "args",
            "target",
            "labels",
            "cache_from",
            "cache_to",
            "network",
            "shm_size",
            "tags",
            "platforms",
            "no_cache",
            "pull",
        ],
    )?;
    let b = Build {
        context: context(&f.str("context")?.unwrap_or_else(|| ".".into())),
        dockerfile: f.str("dockerfile")?,
        dockerfile_inline: f.str("dockerfile_inline")?,
        args: f.map_opt("args")?,
        target: f.str("target")?,
        labels: f.map("labels")?,
        cache_from: f.strs("cache_from")?,
        cache_to: f.strs("cache_to")?,
        network: f.str("network")?,
        shm_size: f.bytes("shm_size")?,
        tags: f.strs("tags")?,
        platforms: f.strs("platforms")?,
        no_cache: f.bool("no_cache")?,
        pull: f.bool("pull")?,
    };
    if b.dockerfile.is_some() && b.dockerfile_inline.is_some() {
        return Err(err(
            path,
            "dockerfile and dockerfile_inline cannot both be set",
        ));
    }
    Ok(b)
}

fn env_files(v: &Value, path: &str, ctx: &Ctx) -> Result<Vec<EnvFile>> {
    let items: Vec<Value> = match v {
        Value::Sequence(s) => s.clone(),
        v => vec![v.clone()],
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let ip = if matches!(v, Value::Sequence(_)) {
                format!("{path}[{i}]")
            } else {
                path.to_string()
            };
            match item {
                Value::Mapping(_) => {
                    let f = Fields::new(item, &ip, &["path", "required", "format"])?;
                    if f.str("format")?.is_some_and(|x| x != "raw") {
                        return Err(err(&f.path("format"), "only the raw format is supported"));
                    }
                    Ok(EnvFile {
                        path: ctx
                            .host_path(&f.str("path")?.ok_or_else(|| err(&ip, "missing path"))?),
                        required: f.opt_bool("required")?.unwrap_or(true),
                    })
                }
                item => Ok(EnvFile {
                    path: ctx.host_path(&scalar(item, &ip)?),
                    required: true,
                }),
            }
        })
        .collect()
}

fn depends_on(v: &Value, path: &str) -> Result<BTreeMap<String, DependsOn>> {
    let mut out = BTreeMap::new();
    let default = || DependsOn {
        condition: "service_started".into(),
        restart: false,
        required: true,
    };
    match v {
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                out.insert(scalar(item, &format!("{path}[{i}]"))?, default());
            }
        }
        Value::Mapping(m) => {
            for (k, d) in m {
                let k = key_string(k);
                let dp = child_path(path, &k);
                if d.is_null() {
                    out.insert(k, default());
                    continue;
                }
                let f = Fields::new(d, &dp, &["condition", "restart", "required"])?;
                out.insert(
                    k,
                    DependsOn {
                        condition: f
                            .one_of(
                                "condition",
                                &[
                                    "service_started",
                                    "service_healthy",
                                    "service_completed_successfully",
                                ],
                            )?
                            .unwrap_or("service_started".into()),
                        restart: f.bool("restart")?,
                        required: f.opt_bool("required")?.unwrap_or(true),
                    },
                );
            }
        }
        other => {
            return Err(err(
                path,
                format!("expected a list or a mapping, got {}", kind(other)),
            ))
        }
    }
    Ok(out)
}

fn service_networks(v: &Value, path: &str) -> Result<BTreeMap<String, ServiceNetwork>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                out.insert(
                    scalar(item, &format!("{path}[{i}]"))?,
                    ServiceNetwork::default(),
                );
            }
        }
        Value::Mapping(m) => {
            for (k, d) in m {
                let k = key_string(k);
                let dp = child_path(path, &k);
                if d.is_null() {
                    out.insert(k, ServiceNetwork::default());
                    continue;
                }
                if let Value::Mapping(dm) = d {
                    for key in [
                        "link_local_ips",
                        "mac_address",
                        "driver_opts",
                        "gw_priority",
                        "interface_name",
                    ] {
                        if dm.contains_key(key) {
                            return Err(err(&child_path(&dp, key), format!("{key:?} is a valid compose attribute that shoal does not support yet")));
                        }
                    }
                }
                let f = Fields::new(
                    d,
                    &dp,
                    &["aliases", "ipv4_address", "ipv6_address", "priority"],
                )?;
                out.insert(
                    k,
                    ServiceNetwork {
                        aliases: f.strs("aliases")?,
                        ipv4_address: f.str("ipv4_address")?,
                        ipv6_address: f.str("ipv6_address")?,
                        priority: f.int("priority")?,
                    },
                );
            }
        }
        other => {
            return Err(err(
                path,
                format!("expected a list or a mapping, got {}", kind(other)),
            ))
        }
    }
    Ok(out)
}

fn healthcheck(v: &Value, path: &str) -> Result<Healthcheck> {
    let f = Fields::new(
        v,
        path,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
    )?;
    let mut h = Healthcheck {
        interval: f.dur("interval")?,
        timeout: f.dur("timeout")?,
        retries: f.uint("retries")?,
        start_period: f.dur("start_period")?,
        start_interval: f.dur("start_interval")?,
        disable: f.bool("disable")?,
        test: Vec::new(),
    };
    if let Some((t, p)) = f.get("test") {
        let test = match t {
            Value::Sequence(_) => str_list(t, &p)?,
            t => vec!["CMD-SHELL".to_string(), scalar(t, &p)?],
        };
        match test.first().map(String::as_str) {
            Some("NONE") => h.disable = true,
            Some("CMD") | Some("CMD-SHELL") if test.len() > 1 => h.test = test,
            _ => {
                return Err(err(&p, "expected [\"CMD\", args...], [\"CMD-SHELL\", command], [\"NONE\"] or a command string"))
            }
        }
    }
    if h.disable {
        h.test.clear();
    }
    Ok(h)
}

fn deploy(v: &Value, path: &str) -> Result<Deploy> {
    let f = Fields::new(
        v,
        path,
        &[
            "mode",
            "replicas",
            "labels",
            "resources",
            "restart_policy",
            "update_config",
            "rollback_config",
            "placement",
            "endpoint_mode",
        ],
    )?;
    let mut d = Deploy {
        mode: f.one_of(
            "mode",
            &["replicated", "global", "replicated-job", "global-job"],
        )?,
        replicas: f.uint("replicas")?,
        labels: f.map("labels")?,
        endpoint_mode: f.one_of("endpoint_mode", &["vip", "dnsrr"])?,
        ..Default::default()
    };
    if let Some((r, p)) = f.get("resources") {
        let r = Fields::new(r, &p, &["limits", "reservations"])?;
        let spec = |key: &str| -> Result<Option<ResourceSpec>> {
            let Some((v, p)) = r.get(key) else {
                return Ok(None);
            };
            if let Value::Mapping(m) = v {
                for k in ["devices", "generic_resources"] {
                    if m.contains_key(k) {
                        return Err(err(&child_path(&p, k), format!("{k:?} is a valid compose attribute that shoal does not support yet")));
                    }
                }
            }
            let s = Fields::new(v, &p, &["cpus", "memory", "pids"])?;
            Ok(Some(ResourceSpec {
                cpus: s.float("cpus")?,
                memory: s.bytes("memory")?,
                pids: s.int("pids")?,
            }))
        };
        d.resources = Some(Resources {
            limits: spec("limits")?,
            reservations: spec("reservations")?,
        });
    }
    if let Some((r, p)) = f.get("restart_policy") {
        let r = Fields::new(r, &p, &["condition", "delay", "max_attempts", "window"])?;
        d.restart_policy = Some(RestartPolicy {
            condition: r.one_of("condition", &["none", "on-failure", "any"])?,
            delay: r.dur("delay")?,
            max_attempts: r.uint("max_attempts")?,
            window: r.dur("window")?,
        });
    }
    for key in ["update_config", "rollback_config"] {
        if let Some((u, p)) = f.get(key) {
            let u = Fields::new(
                u,
                &p,
                &[
                    "parallelism",
                    "delay",
                    "failure_action",
                    "monitor",
                    "max_failure_ratio",
                    "order",
                ],
            )?;
            let blue_green_only = |k: &str| -> Result<()> {
                if key == "rollback_config" && u.get(k).is_some() {
                    return Err(err(
                        &u.path(k),
                        "a blue-green setting belongs under deploy.update_config",
                    ));
                }
                Ok(())
            };
            for k in ["x-strategy", "x-promote", "x-keep-blue", "x-verify"] {
                blue_green_only(k)?;
            }
            let verify = match u.get("x-verify") {
                None => Vec::new(),
                Some((t @ Value::Sequence(_), p)) => {
                    let test = str_list(t, &p)?;
                    if !matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL"))
                        || test.len() < 2
                    {
                        return Err(err(
                            &p,
                            "expected [\"CMD\", args...], [\"CMD-SHELL\", command] or a command string",
                        ));
                    }
                    test
                }
                Some((t, p)) => vec!["CMD-SHELL".to_string(), scalar(t, &p)?],
            };
            let cfg = UpdateConfig {
                parallelism: u.uint("parallelism")?,
                delay: u.dur("delay")?,
                failure_action: u.one_of("failure_action", &["continue", "rollback", "pause"])?,
                monitor: u.dur("monitor")?,
                max_failure_ratio: u.float("max_failure_ratio")?,
                order: u.one_of("order", &["stop-first", "start-first"])?,
                drain: u.dur("x-drain")?,
                strategy: u.one_of("x-strategy", &["rolling", "blue-green"])?,
                promote: u.one_of("x-promote", &["auto", "manual"])?,
                keep_blue: u.dur("x-keep-blue")?,
                verify,
            };
            if key == "update_config" {
                d.update_config = Some(cfg);
            } else {
                d.rollback_config = Some(cfg);
            }
        }
    }
    if let Some((pl, p)) = f.get("placement") {
        let pl = Fields::new(
            pl,
            &p,
            &["constraints", "preferences", "max_replicas_per_node"],
        )?;
        let mut preferences = Vec::new();
        if let Some((prefs, pp)) = pl.get("preferences") {
            for (i, pref) in seq(prefs, &pp)?.iter().enumerate() {
                let pf = Fields::new(pref, &format!("{pp}[{i}]"), &["spread"])?;
                preferences.push(PlacementPreference {
                    spread: pf
                        .str("spread")?
                        .ok_or_else(|| err(&format!("{pp}[{i}]"), "missing spread"))?,
                });
            }
        }
        d.placement = Some(Placement {
            constraints: pl.strs("constraints")?,
            preferences,
            max_replicas_per_node: pl.uint("max_replicas_per_node")?,
        });
    }
    Ok(d)
}

fn extra_hosts(v: &Value, path: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match v {
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                let ip = format!("{path}[{i}]");
                let text = scalar(item, &ip)?;
                let (host, addr) = text
                    .split_once('=')
                    .or_else(|| text.split_once(':'))
                    .ok_or_else(|| {
                        err(
                            &ip,
                            format!("invalid extra host {text:?}: expected HOST=IP or HOST:IP"),
                        )
                    })?;
                out.entry(host.to_string())
                    .or_default()
                    .push(addr.to_string());
            }
        }
        Value::Mapping(m) => {
            for (k, a) in m {
                let k = key_string(k);
                let addrs = str_list(a, &child_path(path, &k))?;
                out.entry(k).or_default().extend(addrs);
            }
        }
        other => {
            return Err(err(
                path,
                format!("expected a list or a mapping, got {}", kind(other)),
            ))
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// top-level resources

/// `external: true`, or the legacy `external: {name: x}`.
fn external(f: &Fields) -> Result<(bool, Option<String>)> {
    match f.get("external") {
        None => Ok((false, None)),
        Some((Value::Mapping(_), p)) => {
            let e = Fields::new(f.map.get("external").unwrap_or(&Value::Null), &p, &["name"])?;
            Ok((true, e.str("name")?))
        }
        Some((v, p)) => Ok((boolean(v, &p)?, None)),
    }
}

/// An external resource is only named: other settings belong to whoever created it.
fn external_conflicts(f: &Fields, ext: bool, keys: &[&str]) -> Result<()> {
    if !ext {
        return Ok(());
    }
    match keys.iter().find(|k| f.get(k).is_some()) {
        Some(k) => Err(err(
            &f.path(k),
            format!("conflicting parameter {k:?} for an external resource: only name is allowed"),
        )),
        None => Ok(()),
    }
}

pub fn network(key: &str, v: &Value, path: &str, project: &str) -> Result<Network> {
    if v.is_null() {
        return Ok(Network {
            name: format!("{project}_{key}"),
            ..Default::default()
        });
    }
    let f = Fields::new(
        v,
        path,
        &[
            "name",
            "driver",
            "driver_opts",
            "external",
            "internal",
            "attachable",
            "enable_ipv6",
            "enable_ipv4",
            "ipam",
            "labels",
        ],
    )?;
    let (ext, legacy_name) = external(&f)?;
    external_conflicts(
        &f,
        ext,
        &[
            "driver",
            "driver_opts",
            "internal",
            "attachable",
            "enable_ipv6",
            "ipam",
        ],
    )?;
    let name = f.str("name")?.or(legacy_name);
    let mut ipam = None;
    if let Some((i, p)) = f.get("ipam") {
        let i = Fields::new(i, &p, &["driver", "config", "options"])?;
        let mut config = Vec::new();
        if let Some((c, cp)) = i.get("config") {
            for (n, pool) in seq(c, &cp)?.iter().enumerate() {
                let pf = Fields::new(
                    pool,
                    &format!("{cp}[{n}]"),
                    &["subnet", "gateway", "ip_range", "aux_addresses"],
                )?;
                config.push(IpamPool {
                    subnet: pf.str("subnet")?,
                    gateway: pf.str("gateway")?,
                    ip_range: pf.str("ip_range")?,
                    aux_addresses: pf.map("aux_addresses")?,
                });
            }
        }
        ipam = Some(Ipam {
            driver: i.str("driver")?,
            config,
            options: i.map("options")?,
        });
    }
    if f.opt_bool("enable_ipv4")? == Some(false) {
        return Err(err(
            &f.path("enable_ipv4"),
            "\"enable_ipv4: false\" is not supported by shoal yet",
        ));
    }
    Ok(Network {
        name: name.unwrap_or_else(|| {
            if ext {
                key.to_string()
            } else {
                format!("{project}_{key}")
            }
        }),
        driver: f.str("driver")?,
        driver_opts: f.map("driver_opts")?,
        external: ext,
        internal: f.bool("internal")?,
        attachable: f.bool("attachable")?,
        enable_ipv6: f.bool("enable_ipv6")?,
        ipam,
        labels: f.map("labels")?,
    })
}

pub fn volume(key: &str, v: &Value, path: &str, project: &str) -> Result<Volume> {
    if v.is_null() {
        return Ok(Volume {
            name: format!("{project}_{key}"),
            ..Default::default()
        });
    }
    let f = Fields::new(
        v,
        path,
        &["name", "driver", "driver_opts", "external", "labels"],
    )?;
    let (ext, legacy_name) = external(&f)?;
    external_conflicts(&f, ext, &["driver", "driver_opts"])?;
    let name = f.str("name")?.or(legacy_name);
    Ok(Volume {
        name: name.unwrap_or_else(|| {
            if ext {
                key.to_string()
            } else {
                format!("{project}_{key}")
            }
        }),
        driver: f.str("driver")?,
        driver_opts: f.map("driver_opts")?,
        external: ext,
        labels: f.map("labels")?,
    })
}

pub fn file_object(
    key: &str,
    v: &Value,
    path: &str,
    project: &str,
    ctx: &Ctx,
) -> Result<FileObject> {
    if let Value::Mapping(m) = v {
        for k in ["driver", "driver_opts", "template_driver"] {
            if m.contains_key(k) {
                return Err(err(
                    &child_path(path, k),
                    format!("{k:?} is a valid compose attribute that shoal does not support yet"),
                ));
            }
        }
    }
    let f = Fields::new(
        v,
        path,
        &[
            "name",
            "file",
            "environment",
            "content",
            "external",
            "labels",
        ],
    )?;
    let (ext, legacy_name) = external(&f)?;
    let name = f.str("name")?.or(legacy_name);
    let o = FileObject {
        name: name.unwrap_or_else(|| {
            if ext {
                key.to_string()
            } else {
                format!("{project}_{key}")
            }
        }),
        file: f.str("file")?.map(|p| ctx.host_path(&p)),
        environment: f.str("environment")?,
        content: f.str("content")?,
        external: ext,
        labels: f.map("labels")?,
    };
    let sources = usize::from(o.file.is_some())
        + usize::from(o.environment.is_some())
        + usize::from(o.content.is_some())
        + usize::from(o.external);
    if sources != 1 {
        return Err(err(
            path,
            "set exactly one of file, environment, content or external",
        ));
    }
    Ok(o)
}
