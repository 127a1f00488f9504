//! A service's published ports on this node: one port-layer key per service, whose backends
//! are the service's running tasks here. (Swarm's routing mesh on one node: every replica
//! answers on the port; the cluster-wide mesh extends the backend set to other nodes.)
//!
//! - A task that is about to start reserves the ports (a clash is its start error, as with
//!   `docker run -p`); which tasks are backends is the rotation's decision
//!   ([`super::rotation`]): running, healthy and not held out by the manager; a stopping task
//!   leaves the backends before its drain period and its stop signal;
//! - when the node has no task of the service left, the ports are freed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use shoal_proto::{PortConfig, PortProtocol, Task};

use crate::ports::{PortManager, PortMapping, Protocol};

/// One service's published ports on this node.
#[derive(Default)]
struct Published {
    mappings: Vec<PortMapping>,
    /// Tasks here that hold the reservation.
    tasks: BTreeSet<String>,
    /// Running tasks and the address the port reaches them at.
    backends: BTreeMap<String, Ipv4Addr>,
}

impl Published {
    fn backends(&self) -> Vec<Ipv4Addr> {
        self.backends.values().copied().collect()
    }
}

#[derive(Clone)]
pub struct PublishedPorts {
    ports: PortManager,
    services: Arc<Mutex<HashMap<String, Published>>>,
}

/// The port layer's mappings of a task's published ports. Pure.
pub fn mappings(task: &Task) -> Result<Vec<PortMapping>, String> {
    let ports = task
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    ports
        .iter()
        .map(|p| {
            let port = |n: u32, what: &str| {
                u16::try_from(n).map_err(|_| format!("{what} port {n} is out of range"))
            };
            Ok(PortMapping {
                host_ip: if p.host_ip.is_empty() {
                    None
                } else {
                    Some(p.host_ip.parse().map_err(|_| {
                        format!("published port: {:?} is not an IPv4 address", p.host_ip)
                    })?)
                },
                host_port: port(p.published_port, "published")?,
                container_port: match port(p.target_port, "target")? {
                    0 => return Err("a published port needs a target port".into()),
                    n => n,
                },
                protocol: match p.protocol() {
                    PortProtocol::Tcp => Protocol::Tcp,
                    PortProtocol::Udp => Protocol::Udp,
                },
            })
        })
        .collect()
}

/// The task status form of the resolved mappings (random ports filled in).
fn configs(task: &Task, resolved: &[PortMapping]) -> Vec<PortConfig> {
    let asked = task
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.clone())
        .unwrap_or_default();
    asked
        .into_iter()
        .zip(resolved)
        .map(|(mut p, m)| {
            p.published_port = u32::from(m.host_port);
            p
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PublishedPorts {
    pub fn new(ports: PortManager) -> Self {
        PublishedPorts {
            ports,
            services: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// After a daemon restart: drops the ports of services with no container left here.
    pub fn reconcile(&self, live_services: &HashSet<String>) {
        match self.ports.reconcile(live_services) {
            Ok(report) => tracing::info!(?report, "published ports reconciled"),
            Err(e) => tracing::warn!("reconciling published ports: {e}"),
        }
    }

    /// Reserves the task's ports before it starts. Blocking (the port layer runs `nft`).
    pub fn reserve(&self, task: &Task) -> Result<(), String> {
        let mappings = mappings(task)?;
        if mappings.is_empty() {
            return Ok(());
        }
        let mut services = lock(&self.services);
        let entry = services.entry(task.service_id.clone()).or_default();
        let result = self
            .ports
            .publish(&task.service_id, &mappings, &entry.backends());
        match result {
            Ok(resolved) => {
                entry.mappings = resolved;
                entry.tasks.insert(task.id.clone());
                Ok(())
            }
            Err(e) => {
                if entry.tasks.is_empty() {
                    services.remove(&task.service_id);
                }
                Err(e.to_string())
            }
        }
    }

    /// The task runs: its service's ports are published (again, after a daemon restart, when
    /// the task was adopted rather than started). Returns its ports with the host ports
    /// resolved. Whether it gets connections is the rotation's business
    /// ([`PublishedPorts::set_backends`]). Blocking.
    pub fn ensure(&self, task: &Task) -> Result<Vec<PortConfig>, String> {
        let mappings = mappings(task)?;
        if mappings.is_empty() {
            return Ok(Vec::new());
        }
        let mut services = lock(&self.services);
        let entry = services.entry(task.service_id.clone()).or_default();
        entry.tasks.insert(task.id.clone());
        if entry.mappings.is_empty() {
            let resolved = self
                .ports
                .publish(&task.service_id, &mappings, &entry.backends())
                .map_err(|e| e.to_string())?;
            entry.mappings = resolved;
        }
        Ok(configs(task, &entry.mappings))
    }

    /// The service's published ports now reach exactly `backends` (task → address), switched
    /// in one port-layer transaction. A service without published ports here is left alone.
    /// Blocking.
    pub fn set_backends(&self, service: &str, backends: &BTreeMap<String, Ipv4Addr>) {
        let mut services = lock(&self.services);
        let Some(entry) = services.get_mut(service).filter(|e| !e.mappings.is_empty()) else {
            return;
        };
        entry.backends = backends.clone();
        if let Err(e) = self.ports.set_backends(service, &entry.backends()) {
            tracing::warn!(%service, "updating published port backends: {e}");
        }
    }

    /// The task's container is gone: the service's ports are freed once no task of it is left
    /// here. Blocking.
    pub fn release(&self, task_id: &str) {
        let mut services = lock(&self.services);
        let mut emptied = Vec::new();
        for (service, entry) in services.iter_mut() {
            // The rotation took it out of the backends already (the task left it first).
            entry.backends.remove(task_id);
            if entry.tasks.remove(task_id) && entry.tasks.is_empty() {
                emptied.push(service.clone());
            }
        }
        for service in emptied {
            services.remove(&service);
            if let Err(e) = self.ports.unpublish(&service) {
                tracing::warn!(%service, "freeing published ports: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{EndpointSpec, ServiceSpec};

    fn task(ports: Vec<PortConfig>) -> Task {
        Task {
            id: "t1".into(),
            service_id: "s1".into(),
            spec: Some(ServiceSpec {
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
    fn port_configs_become_mappings() {
        let t = task(vec![
            PortConfig {
                target_port: 80,
                published_port: 8080,
                host_ip: "127.0.0.1".into(),
                ..Default::default()
            },
            PortConfig {
                protocol: PortProtocol::Udp as i32,
                target_port: 53,
                ..Default::default()
            },
        ]);
        let m = mappings(&t).expect("valid");
        assert_eq!(m[0].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m[0].host_port, m[0].container_port), (8080, 80));
        assert_eq!(m[1].protocol, Protocol::Udp);
        assert_eq!(m[1].host_port, 0);
        let mut resolved = m.clone();
        resolved[1].host_port = 40000;
        assert_eq!(configs(&t, &resolved)[1].published_port, 40000);
        let bad = task(vec![PortConfig {
            target_port: 70000,
            ..Default::default()
        }]);
        assert!(mappings(&bad).is_err());
    }
}
