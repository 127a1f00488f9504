//! The container's managed `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
//!
//! The runtime writes them into the container's state dir (`hosts`, `hostname`,
//! `resolv.conf`) and bind-mounts them over the image's files (created when the image lacks
//! them), writable as in Docker. Rewriting a file in place (same inode: truncate + write, see
//! [`super::Runtime::update_etc`]) is visible inside the running container at once.
//!
//! Choices:
//! - `/etc/hosts` is Docker's: the localhost and IPv6 lines, then [`EtcFiles::hosts`] in order
//!   (the caller puts the container's own addresses with its hostname and aliases first, then
//!   `extra_hosts`). With network mode host it is the host's `/etc/hosts` plus the entries.
//! - `/etc/resolv.conf`: `dns_servers`/`dns_search`/`dns_options` replace the host's
//!   `nameserver`/`search`/`options` lines when given. Without `dns_servers` the host's
//!   nameservers are used, minus loopback ones (127.0.0.0/8, ::1: unreachable from another
//!   network namespace). Docker then falls back to Google's 8.8.8.8 / 8.8.4.4; we add nothing
//!   that reaches outside on our own, so such a container may have no nameserver at all. With
//!   network mode host the host's nameservers are kept as they are (loopback works there).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub ip: String,
    pub names: Vec<String>,
}

impl HostEntry {
    pub fn new(ip: impl Into<String>, names: &[&str]) -> HostEntry {
        HostEntry {
            ip: ip.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }
}

/// What goes into the managed /etc files (besides the hostname, from the config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcFiles {
    /// After the localhost lines, in order: the container's own addresses (with hostname and
    /// aliases), then `extra_hosts`.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub dns_options: Vec<String>,
}

/// Docker's default /etc/hosts head.
const HOSTS_HEAD: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// The container's /etc/hosts. `host_hosts`: the host's file (network mode host), used instead
/// of the default head.
pub fn render_hosts(etc: &EtcFiles, host_hosts: Option<&str>) -> String {
    let mut out = match host_hosts {
        Some(h) => {
            let mut s = h.to_string();
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        None => HOSTS_HEAD.to_string(),
    };
    for e in &etc.hosts {
        if e.names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", e.ip, e.names.join(" ")));
    }
    out
}

/// The container's /etc/hostname.
pub fn render_hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

fn is_loopback(ip: &str) -> bool {
    // A zone suffix (fe80::1%eth0) is not loopback either way.
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// The container's /etc/resolv.conf from the host's (`host`, may be empty) and the config's
/// DNS settings. `own_netns`: the container has its own network namespace (loopback
/// nameservers of the host are dropped).
pub fn render_resolv_conf(etc: &EtcFiles, host: &str, own_netns: bool) -> String {
    let mut servers = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next() {
                    if !(own_netns && is_loopback(ip)) {
                        servers.push(ip.to_string());
                    }
                }
            }
            // The last search/domain line wins (resolv.conf(5)).
            Some("search") | Some("domain") => search = words.map(str::to_string).collect(),
            Some("options") => options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    if !etc.dns_servers.is_empty() {
        servers = etc.dns_servers.clone();
    }
    if !etc.dns_search.is_empty() {
        search = etc.dns_search.clone();
    }
    if !etc.dns_options.is_empty() {
        options = etc.dns_options.clone();
    }
    let mut out = String::new();
    if servers.is_empty() {
        out.push_str("# no DNS servers: the host's are all on loopback and none were configured\n");
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Parses an `extra_hosts` entry: `host:ip` or `host=ip` (IPv6 addresses may contain ':' and
/// may be bracketed: `host:[::1]`). `host-gateway` as the address becomes `gateway`.
pub fn parse_extra_host(spec: &str, gateway: Option<&str>) -> Result<HostEntry, String> {
    let (name, addr) = match spec.split_once('=') {
        Some(p) => p,
        None => spec
            .split_once(':')
            .ok_or_else(|| format!("extra host {spec:?} is not host:ip or host=ip"))?,
    };
    let name = name.trim();
    let mut addr = addr.trim();
    if let Some(inner) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        addr = inner;
    }
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("extra host {spec:?}: invalid host name {name:?}"));
    }
    let ip = if addr == "host-gateway" {
        gateway
            .ok_or_else(|| {
                format!("extra host {spec:?}: host-gateway, but no gateway address is known")
            })?
            .to_string()
    } else {
        addr.to_string()
    };
    ip.parse::<IpAddr>()
        .map_err(|_| format!("extra host {spec:?}: invalid IP address {ip:?}"))?;
    Ok(HostEntry {
        ip,
        names: vec![name.to_string()],
    })
}

/// The pure checks of the config's /etc settings.
pub(crate) fn validate(etc: &EtcFiles) -> Result<(), String> {
    let bad = |s: &str| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\0');
    for h in &etc.hosts {
        if h.ip.parse::<IpAddr>().is_err() {
            return Err(format!("hosts entry: invalid IP address {:?}", h.ip));
        }
        if let Some(n) = h.names.iter().find(|n| bad(n)) {
            return Err(format!("hosts entry for {}: invalid name {n:?}", h.ip));
        }
    }
    for s in &etc.dns_servers {
        if s.parse::<IpAddr>().is_err() {
            return Err(format!("dns server {s:?} is not an IP address"));
        }
    }
    if let Some(s) = etc
        .dns_search
        .iter()
        .chain(&etc.dns_options)
        .find(|s| bad(s))
    {
        return Err(format!(
            "dns search/option {s:?} is empty or has whitespace"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_like_docker() {
        let etc = EtcFiles {
            hosts: vec![
                HostEntry::new("10.0.1.5", &["web-1", "web"]),
                HostEntry::new("192.168.1.9", &["db.example"]),
            ],
            ..EtcFiles::default()
        };
        assert_eq!(
            render_hosts(&etc, None),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n10.0.1.5\tweb-1 web\n192.168.1.9\tdb.example\n"
        );
        assert_eq!(
            render_hosts(&etc, Some("127.0.0.1 localhost\n10.1.1.1 hostbox")),
            "127.0.0.1 localhost\n10.1.1.1 hostbox\n10.0.1.5\tweb-1 web\n192.168.1.9\tdb.example\n"
        );
        assert_eq!(render_hostname("abc"), "abc\n");
    }

    #[test]
    fn resolv_conf_drops_loopback_and_overrides() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\n\
                    search corp.example\noptions edns0 trust-ad\n";
        let none = EtcFiles::default();
        assert_eq!(
            render_resolv_conf(&none, host, true),
            "nameserver 10.0.0.2\nsearch corp.example\noptions edns0 trust-ad\n"
        );
        assert_eq!(
            render_resolv_conf(&none, host, false),
            "nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\n\
             search corp.example\noptions edns0 trust-ad\n"
        );
        let only_loopback = "nameserver 127.0.0.53\n";
        let out = render_resolv_conf(&none, only_loopback, true);
        assert!(!out.contains("nameserver"), "{out}");
        let given = EtcFiles {
            dns_servers: vec!["127.0.0.11".into()],
            dns_search: vec!["svc.local".into()],
            dns_options: vec!["ndots:0".into()],
            ..EtcFiles::default()
        };
        assert_eq!(
            render_resolv_conf(&given, host, true),
            "nameserver 127.0.0.11\nsearch svc.local\noptions ndots:0\n"
        );
    }

    #[test]
    fn extra_hosts_parse() {
        assert_eq!(
            parse_extra_host("db:10.0.0.3", None),
            Ok(HostEntry::new("10.0.0.3", &["db"]))
        );
        assert_eq!(
            parse_extra_host("db=10.0.0.3", None),
            Ok(HostEntry::new("10.0.0.3", &["db"]))
        );
        assert_eq!(
            parse_extra_host("v6:::1", None),
            Ok(HostEntry::new("::1", &["v6"]))
        );
        assert_eq!(
            parse_extra_host("v6=[fe80::1]", None),
            Ok(HostEntry::new("fe80::1", &["v6"]))
        );
        assert_eq!(
            parse_extra_host("host.docker.internal:host-gateway", Some("172.17.0.1")),
            Ok(HostEntry::new("172.17.0.1", &["host.docker.internal"]))
        );
        assert!(parse_extra_host("gw:host-gateway", None)
            .expect_err("no gateway")
            .contains("host-gateway"));
        assert!(parse_extra_host("nohost", None).is_err());
        assert!(parse_extra_host("a b:1.2.3.4", None).is_err());
        assert!(parse_extra_host("x:notanip", None).is_err());
    }

    #[test]
    fn validation() {
        validate(&EtcFiles::default()).expect("empty");
        let mut e = EtcFiles::default();
        e.dns_servers.push("dns.example".into());
        assert!(validate(&e).is_err());
        let mut e = EtcFiles::default();
        e.hosts.push(HostEntry::new("1.2.3.4", &["a b"]));
        assert!(validate(&e).is_err());
    }
}
