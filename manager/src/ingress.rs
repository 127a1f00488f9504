//! Ingress ports (the routing mesh): a port a service publishes in ingress mode (the default)
//! is one port of the whole cluster, open on every node. Pure.
//!
//! - Two services cannot publish the same ingress port (and protocol): the second is refused
//!   when it is created or updated, naming the first ([`check_ports`]).
//! - A port asked as 0 gets a free one from the cluster's range (`Cluster.ingress_port_range`,
//!   Swarm's [`DEFAULT_RANGE`] unless set when the cluster was made), chosen once by the manager
//!   and kept in the service (`Service.ingress_ports`), so that every node opens the same one
//!   ([`IngressPorts::resolve`]).
//! - Host-mode ports are each node's own business: the agent picks its random ones.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use shoal_proto::{PortConfig, PortProtocol, PublishMode, Service, ServiceSpec};

use crate::store::State;

/// Where ingress ports asked as 0 come from unless the cluster says otherwise (Swarm's dynamic
/// range).
pub const DEFAULT_RANGE: RangeInclusive<u32> = 30000..=32767;

/// Parses a port range `FIRST-LAST` (1–65535, FIRST ≤ LAST).
pub fn parse_range(text: &str) -> Result<RangeInclusive<u32>, String> {
    let bad = || format!("port range {text:?}: expected FIRST-LAST, e.g. 30000-32767");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u32 = first.trim().parse().map_err(|_| bad())?;
    let last: u32 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || last > 65535 || first > last {
        return Err(format!(
            "port range {text:?}: ports go from 1 to 65535, the first no higher than the last"
        ));
    }
    Ok(first..=last)
}

/// The cluster's range for ingress ports asked as 0.
fn range_of(state: &State) -> RangeInclusive<u32> {
    state
        .cluster
        .as_ref()
        .map(|c| c.ingress_port_range.as_str())
        .filter(|r| !r.is_empty())
        .and_then(|r| parse_range(r).ok())
        .unwrap_or(DEFAULT_RANGE)
}

fn ingress_of(spec: Option<&ServiceSpec>) -> impl Iterator<Item = &PortConfig> {
    spec.and_then(|s| s.endpoint.as_ref())
        .into_iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.publish_mode() == PublishMode::Ingress)
}

/// Whether a service publishes anything in ingress mode.
pub fn has_ingress_ports(spec: Option<&ServiceSpec>) -> bool {
    ingress_of(spec).next().is_some()
}

fn key(p: &PortConfig) -> (PortProtocol, u32) {
    (p.protocol(), p.published_port)
}

/// Refuses a spec whose fixed ingress ports another service (not `service_id`) publishes.
pub fn check_ports(state: &State, service_id: &str, spec: &ServiceSpec) -> Result<(), String> {
    for port in ingress_of(Some(spec)).filter(|p| p.published_port != 0) {
        let owner = state.services.values().find(|s| {
            s.id != service_id
                && s.ingress_ports
                    .iter()
                    .chain(ingress_of(s.spec.as_ref()))
                    .any(|p| key(p) == key(port))
        });
        if let Some(owner) = owner {
            let name = owner.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            return Err(format!(
                "port {}/{} is already published by service {name}: pick another, or publish it in host mode",
                port.published_port,
                port.protocol().as_str_name().trim_start_matches("PORT_PROTOCOL_").to_lowercase()
            ));
        }
    }
    Ok(())
}

/// The ingress ports every service holds: built once per pass, then [`Self::resolve`] per
/// service.
pub struct IngressPorts {
    taken: HashSet<(PortProtocol, u32)>,
    range: RangeInclusive<u32>,
}

impl IngressPorts {
    pub fn new(state: &State) -> IngressPorts {
        let taken = state
            .services
            .values()
            .flat_map(|s| s.ingress_ports.iter().chain(ingress_of(s.spec.as_ref())))
            .filter(|p| p.published_port != 0)
            .map(key)
            .collect();
        IngressPorts {
            taken,
            range: range_of(state),
        }
    }

    /// The ingress ports `service` should hold, when they differ from those it holds: its
    /// spec's, with a port chosen for each asked as 0 (the one chosen before, while the spec
    /// still asks for it).
    pub fn resolve(&mut self, service: &Service) -> Option<Vec<PortConfig>> {
        let mut kept: Vec<&PortConfig> = service
            .ingress_ports
            .iter()
            .filter(|p| self.range.contains(&p.published_port))
            .collect();
        let mut resolved = Vec::new();
        for port in ingress_of(service.spec.as_ref()) {
            let mut port = port.clone();
            if port.published_port == 0 {
                let same = |p: &&PortConfig| {
                    p.protocol == port.protocol
                        && p.target_port == port.target_port
                        && p.host_ip == port.host_ip
                };
                port.published_port = match kept.iter().position(same) {
                    Some(i) => kept.remove(i).published_port,
                    None => {
                        let proto = port.protocol();
                        let taken = &self.taken;
                        let free = self.range.clone().find(|n| !taken.contains(&(proto, *n)))?;
                        self.taken.insert((proto, free));
                        free
                    }
                };
            }
            resolved.push(port);
        }
        (resolved != service.ingress_ports).then_some(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::EndpointSpec;

    fn port(published: u32, target: u32, mode: PublishMode) -> PortConfig {
        PortConfig {
            protocol: PortProtocol::Tcp as i32,
            target_port: target,
            published_port: published,
            publish_mode: mode as i32,
            host_ip: String::new(),
        }
    }

    fn service(id: &str, ports: Vec<PortConfig>) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: id.into(),
                endpoint: Some(EndpointSpec {
                    ports,
                    mode: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_fixed_ingress_port_belongs_to_one_service() {
        let mut state = State::default();
        let web = service("web", vec![port(8080, 80, PublishMode::Ingress)]);
        state.services.insert("web".into(), web.clone());
        let other = service("api", vec![port(8080, 81, PublishMode::Ingress)]);
        let err = check_ports(&state, "api", other.spec.as_ref().expect("spec")).unwrap_err();
        assert!(err.contains("already published by service web"), "{err}");
        check_ports(&state, "web", web.spec.as_ref().expect("spec")).expect("its own port");
        let host = service("api", vec![port(8080, 81, PublishMode::Host)]);
        check_ports(&state, "api", host.spec.as_ref().expect("spec"))
            .expect("host mode is per node");
    }

    #[test]
    fn ports_asked_as_zero_get_a_free_one_from_the_range_once() {
        let mut state = State::default();
        state.services.insert(
            "a".into(),
            service("a", vec![port(30000, 80, PublishMode::Ingress)]),
        );
        let mut ports = IngressPorts::new(&state);
        let mut b = service(
            "b",
            vec![
                port(0, 80, PublishMode::Ingress),
                port(0, 90, PublishMode::Host),
            ],
        );
        let resolved = ports.resolve(&b).expect("new");
        assert_eq!(resolved.len(), 1, "host-mode ports are the node's");
        assert_eq!(resolved[0].published_port, 30001);
        b.ingress_ports = resolved;
        assert_eq!(ports.resolve(&b), None, "kept");
    }

    #[test]
    fn the_cluster_may_narrow_the_range() {
        let mut state = State::default();
        state.cluster = Some(shoal_proto::Cluster {
            ingress_port_range: "31000-31001".into(),
            ..Default::default()
        });
        let mut ports = IngressPorts::new(&state);
        let one = |ports: &mut IngressPorts, id: &str| {
            ports
                .resolve(&service(id, vec![port(0, 80, PublishMode::Ingress)]))
                .map(|p| p[0].published_port)
        };
        assert_eq!(one(&mut ports, "a"), Some(31000));
        assert_eq!(one(&mut ports, "b"), Some(31001));
        assert_eq!(one(&mut ports, "c"), None, "the range is used up");
    }

    #[test]
    fn port_ranges_parse_or_say_why_not() {
        assert_eq!(parse_range("30000-30010"), Ok(30000..=30010));
        for bad in ["30000", "a-b", "0-10", "10-5", "1-70000"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }
}
