//! What a container holds besides itself on this node: its mounts (volumes acquired, binds,
//! tmpfs) and its network endpoints (addresses, veths, DNS names, published ports). Standalone
//! containers (`shoal run`) take them through here with a task-shaped request, so they follow
//! the same rules as service tasks.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_proto::{Network, PortConfig, Task};

use super::{apply_network, mounts, TaskNetworks};
use crate::runtime::ContainerConfig;
use crate::volume::VolumeStore;

#[derive(Clone)]
pub struct ContainerResources {
    pub networks: TaskNetworks,
    pub volumes: Arc<VolumeStore>,
}

impl ContainerResources {
    /// Acquires the task's mounts and network endpoints into `config`. On error nothing of
    /// the container's is left behind.
    pub async fn prepare(
        &self,
        task: &Task,
        known: &HashMap<String, Network>,
        config: &mut ContainerConfig,
    ) -> Result<(), String> {
        let (volumes, for_mounts) = (self.volumes.clone(), task.clone());
        let mounted = tokio::task::spawn_blocking(move || mounts::prepare(&volumes, &for_mounts))
            .await
            .unwrap_or_else(|e| Err(format!("preparing mounts crashed: {e}")))?;
        config.mounts = mounted.mounts;
        config.tmpfs.extend(mounted.tmpfs);
        let prepared = match self.networks.prepare(task, known).await {
            Ok(p) => p,
            Err(e) => {
                self.release(&task.id).await;
                return Err(e);
            }
        };
        if let Err(e) = apply_network(config, task, &prepared) {
            self.release(&task.id).await;
            return Err(e);
        }
        Ok(())
    }

    /// The container runs: its names resolve and its published ports reach it. Returns the
    /// ports with their host ports resolved.
    pub async fn announce(&self, task: &Task, container_name: &str) -> Vec<PortConfig> {
        self.networks.announce(task, container_name).await
    }

    /// The container is gone: endpoints, addresses and volumes go back, and networks nothing
    /// needs any more go. Idempotent.
    pub async fn release(&self, container_id: &str) {
        self.networks.release(container_id).await;
        self.networks.prune_unused().await;
        let (volumes, id) = (self.volumes.clone(), container_id.to_string());
        let _ = tokio::task::spawn_blocking(move || mounts::release(&volumes, &id)).await;
    }
}

impl std::fmt::Debug for ContainerResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainerResources")
    }
}
