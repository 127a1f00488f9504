//! Virtual addresses (endpoint mode vip): a connection from a container to a service's VIP
//! goes to one of the service's serving tasks, wherever they run.
//!
//! This kernel has no IPVS (Swarm's way), so each container on an overlay network gets a
//! small nftables table in its own network namespace: a NAT rule on its output path rewrites
//! a VIP destination to a backend picked at random (`numgen`), per connection; conntrack
//! rewrites the replies back. Done inside the client's namespace, the backend sees the
//! client's own address, and nothing crosses the host's tables. A VIP with no serving
//! backend is rejected at once (connection refused) instead of timing out.
//!
//! [`ruleset`] is pure; [`apply`] loads it with `nft -f` inside the container's namespace, as
//! one transaction (the old table goes and the new one comes together).

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::overlay::Vip;

/// The table's name in every container's namespace.
pub const TABLE: &str = "shoal_vip";

/// The nft script that makes a container's VIP table hold exactly `vips` (an empty list
/// removes the table). Pure.
pub fn ruleset(vips: &[Vip]) -> String {
    // Declaring the table first makes the delete valid whether it existed or not.
    let mut script = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    if vips.is_empty() {
        return script;
    }
    script.push_str(&format!("table ip {TABLE} {{\n"));
    // nft 1.0.6 only accepts the name `dstnat` on prerouting: spelt as its number.
    script.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for vip in vips {
        match vip.backends.as_slice() {
            [] => {}
            [one] => script.push_str(&format!("    ip daddr {} dnat to {one}\n", vip.ip)),
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {b}"))
                    .collect();
                script.push_str(&format!(
                    "    ip daddr {} dnat to numgen random mod {} map {{ {} }}\n",
                    vip.ip,
                    many.len(),
                    map.join(", ")
                ));
            }
        }
    }
    script.push_str("  }\n");
    let empty: Vec<Ipv4Addr> = vips
        .iter()
        .filter(|v| v.backends.is_empty())
        .map(|v| v.ip)
        .collect();
    if !empty.is_empty() {
        script.push_str(
            "  chain refuse {\n    type filter hook output priority filter; policy accept;\n",
        );
        for ip in empty {
            script.push_str(&format!(
                "    ip daddr {ip} meta l4proto tcp reject with tcp reset\n    ip daddr {ip} reject\n"
            ));
        }
        script.push_str("  }\n");
    }
    script.push_str("}\n");
    script
}

/// Loads `script` with `nft -f -` inside the network namespace at `netns`.
pub fn apply(netns: &Path, script: &str) -> Result<(), String> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("open network namespace {}: {e}", netns.display()))?;
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the child only calls setns(2), which is async-signal
    // safe, on a descriptor opened before the fork.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run `nft` ({e}); install the nftables package"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft -f in {} failed: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn each_vip_maps_to_its_backends_and_one_without_any_is_refused() {
        let script = ruleset(&[
            Vip {
                ip: ip("10.0.0.9"),
                backends: vec![ip("10.0.0.2"), ip("10.0.0.3")],
            },
            Vip {
                ip: ip("10.0.0.10"),
                backends: vec![ip("10.0.0.4")],
            },
            Vip {
                ip: ip("10.0.0.11"),
                backends: vec![],
            },
        ]);
        assert!(script.starts_with("table ip shoal_vip\ndelete table ip shoal_vip\n"));
        assert!(script.contains(
            "ip daddr 10.0.0.9 dnat to numgen random mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 }"
        ));
        assert!(script.contains("ip daddr 10.0.0.10 dnat to 10.0.0.4\n"));
        assert!(script.contains("ip daddr 10.0.0.11 meta l4proto tcp reject with tcp reset"));
        assert!(!script.contains("daddr 10.0.0.11 dnat"));
    }

    #[test]
    fn no_vips_removes_the_table() {
        assert_eq!(
            ruleset(&[]),
            "table ip shoal_vip\ndelete table ip shoal_vip\n"
        );
    }
}
