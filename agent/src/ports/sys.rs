//! The host side of the published ports behind one trait: loading nft scripts, sysctls, the
//! routing table, and the sockets that reserve host ports. [`RealPortSys`] does it for real,
//! [`FakePortSys`] in memory for unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::network::Ipv4Net;

use super::{PortError, Protocol};

/// A directly connected route (no gateway): the link a backend is reached through, and the
/// route's subnet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirectRoute {
    pub iface: String,
    pub subnet: Ipv4Net,
}

/// A held host port; dropping it releases the port.
pub struct Reservation(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Reservation {
    pub fn new(holder: impl Send + Sync + 'static) -> Self {
        Reservation(Box::new(holder))
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservation")
    }
}

/// Host operations of the published ports. Synchronous; cheap except `apply_nft`.
pub trait PortSys: Send + Sync + 'static {
    /// Loads an nftables script atomically (`nft -f`).
    fn apply_nft(&self, script: &str) -> Result<(), PortError>;
    /// Binds (TCP: without listening) `ip:port` (`None`: 0.0.0.0) and keeps the socket.
    fn reserve(
        &self,
        proto: Protocol,
        ip: Option<Ipv4Addr>,
        port: u16,
    ) -> std::io::Result<Reservation>;
    /// The kernel's ephemeral port range (inclusive).
    fn ephemeral_range(&self) -> (u16, u16);
    /// The directly connected route to `ip` with the longest prefix, if any.
    fn route_to(&self, ip: Ipv4Addr) -> Option<DirectRoute>;
    /// [`route_to`](Self::route_to) of each address.
    fn routes_to(&self, ips: &[Ipv4Addr]) -> Vec<Option<DirectRoute>> {
        ips.iter().map(|&ip| self.route_to(ip)).collect()
    }
    /// Sets `net.ipv4.conf.<iface>.route_localnet` to 1.
    fn enable_route_localnet(&self, iface: &str) -> Result<(), PortError>;
}

/// The real host.
#[derive(Debug, Default, Clone)]
pub struct RealPortSys;

impl RealPortSys {
    pub fn new() -> Self {
        RealPortSys
    }
}

fn bind_tcp_no_listen(addr: SocketAddrV4) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // nix's socket addresses need its `net` feature; two libc calls do not.
    // SAFETY: plain syscalls; the fd is owned at once, the sockaddr lives on the stack.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Parses `/proc/net/route`: the directly connected (gateway 0), up, non-default route with
/// the longest prefix containing `ip`.
pub fn route_from_proc(table: &str, ip: Ipv4Addr) -> Option<DirectRoute> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| v.to_ne_bytes());
    let mut best: Option<DirectRoute> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Some(dst), Some(gw), Ok(flags), Some(mask)) = (
            hex(f[1]),
            hex(f[2]),
            u32::from_str_radix(f[3], 16),
            hex(f[7]),
        ) else {
            continue;
        };
        let prefix = u32::from_be_bytes(mask).count_ones() as u8;
        if flags & 1 == 0 || gw != [0; 4] || prefix == 0 {
            continue;
        }
        let Ok(net) = Ipv4Net::new(Ipv4Addr::from(dst), prefix) else {
            continue;
        };
        if net.contains(ip) && best.as_ref().is_none_or(|b| b.subnet.prefix() < prefix) {
            best = Some(DirectRoute {
                iface: f[0].to_string(),
                subnet: net,
            });
        }
    }
    best
}

impl PortSys for RealPortSys {
    fn apply_nft(&self, script: &str) -> Result<(), PortError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                PortError::Firewall(format!(
                    "cannot run `nft` ({e}); install the nftables package"
                ))
            })?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())
            .map_err(|e| PortError::Firewall(format!("writing to nft: {e}")))?;
        let out = child
            .wait_with_output()
            .map_err(|e| PortError::Firewall(format!("waiting for nft: {e}")))?;
        if !out.status.success() {
            return Err(PortError::Firewall(format!(
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn reserve(
        &self,
        proto: Protocol,
        ip: Option<Ipv4Addr>,
        port: u16,
    ) -> std::io::Result<Reservation> {
        let addr = SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
        Ok(match proto {
            Protocol::Tcp => Reservation::new(bind_tcp_no_listen(addr)?),
            Protocol::Udp => Reservation::new(UdpSocket::bind(addr)?),
        })
    }

    fn ephemeral_range(&self) -> (u16, u16) {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|t| t.parse::<u16>());
                match (it.next(), it.next()) {
                    (Some(Ok(a)), Some(Ok(b))) if a <= b && a > 0 => Some((a, b)),
                    _ => None,
                }
            })
            .unwrap_or((32768, 60999))
    }

    fn route_to(&self, ip: Ipv4Addr) -> Option<DirectRoute> {
        route_from_proc(&std::fs::read_to_string("/proc/net/route").ok()?, ip)
    }

    /// One read of the routing table for all of them.
    fn routes_to(&self, ips: &[Ipv4Addr]) -> Vec<Option<DirectRoute>> {
        let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        ips.iter().map(|&ip| route_from_proc(&table, ip)).collect()
    }

    fn enable_route_localnet(&self, iface: &str) -> Result<(), PortError> {
        if iface.contains('/') || iface.starts_with('.') {
            return Err(PortError::Invalid(format!("bad interface name {iface:?}")));
        }
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
        std::fs::write(&path, "1").map_err(|source| PortError::Io {
            what: format!("writing {path}"),
            source,
        })
    }
}

/// What [`FakePortSys`] holds; public so tests can look at it.
#[derive(Debug, Default, Clone)]
pub struct FakeSysState {
    /// The last nft script applied.
    pub nft_script: String,
    pub nft_applies: usize,
    /// When set, `apply_nft` fails.
    pub fail_nft: bool,
    /// How long `apply_nft` takes (as `nft` does), so that changes can pile up meanwhile.
    pub nft_delay: Option<std::time::Duration>,
    /// Ports a "host process" holds: `reserve` fails with EADDRINUSE.
    pub busy: BTreeSet<(Protocol, u16)>,
    /// Ports our reservations hold now (with the bound IP).
    pub held: BTreeMap<(Protocol, u16), Option<Ipv4Addr>>,
    pub range: (u16, u16),
    pub routes: Vec<DirectRoute>,
    pub route_localnet: BTreeSet<String>,
}

/// In-memory [`PortSys`] for unit tests.
#[derive(Debug, Clone)]
pub struct FakePortSys {
    pub state: Arc<Mutex<FakeSysState>>,
}

impl Default for FakePortSys {
    fn default() -> Self {
        Self::new()
    }
}

impl FakePortSys {
    pub fn new() -> Self {
        FakePortSys {
            state: Arc::new(Mutex::new(FakeSysState {
                range: (40000, 40009),
                ..Default::default()
            })),
        }
    }

    pub fn get(&self) -> FakeSysState {
        self.state.lock().unwrap().clone()
    }
}

struct FakeHold {
    state: Arc<Mutex<FakeSysState>>,
    key: (Protocol, u16),
}

impl Drop for FakeHold {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.held.remove(&self.key);
        }
    }
}

impl PortSys for FakePortSys {
    fn apply_nft(&self, script: &str) -> Result<(), PortError> {
        let delay = self.state.lock().unwrap().nft_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut s = self.state.lock().unwrap();
        if s.fail_nft {
            return Err(PortError::Firewall("injected nft failure".into()));
        }
        s.nft_script = script.to_string();
        s.nft_applies += 1;
        Ok(())
    }

    fn reserve(
        &self,
        proto: Protocol,
        ip: Option<Ipv4Addr>,
        port: u16,
    ) -> std::io::Result<Reservation> {
        let mut s = self.state.lock().unwrap();
        let key = (proto, port);
        // Simplification: any two binds of one port clash, whatever the IPs.
        if s.busy.contains(&key) || s.held.contains_key(&key) {
            return Err(std::io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        s.held.insert(key, ip);
        Ok(Reservation::new(FakeHold {
            state: self.state.clone(),
            key,
        }))
    }

    fn ephemeral_range(&self) -> (u16, u16) {
        self.state.lock().unwrap().range
    }

    fn route_to(&self, ip: Ipv4Addr) -> Option<DirectRoute> {
        let s = self.state.lock().unwrap();
        s.routes
            .iter()
            .filter(|r| r.subnet.contains(ip))
            .max_by_key(|r| r.subnet.prefix())
            .cloned()
    }

    fn enable_route_localnet(&self, iface: &str) -> Result<(), PortError> {
        self.state
            .lock()
            .unwrap()
            .route_localnet
            .insert(iface.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_route_longest_direct_match() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
sh-a\t0000640A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
sh-b\t0001640A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
down\t0002640A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
via\t0003640A\t0100A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = |ip: [u8; 4]| route_from_proc(table, Ipv4Addr::from(ip));
        assert_eq!(
            r([10, 100, 1, 7]),
            Some(DirectRoute {
                iface: "sh-b".into(),
                subnet: "10.100.1.0/24".parse().unwrap()
            })
        );
        assert_eq!(r([10, 100, 0, 7]).unwrap().iface, "sh-a");
        // A down route and a route through a gateway do not count; sh-a's /16 does.
        assert_eq!(r([10, 100, 2, 7]).unwrap().iface, "sh-a");
        assert_eq!(r([10, 100, 3, 7]).unwrap().iface, "sh-a");
        assert_eq!(r([192, 168, 0, 9]).unwrap().iface, "eth0");
        // The default route is not a direct route.
        assert_eq!(r([8, 8, 8, 8]), None);
    }
}
