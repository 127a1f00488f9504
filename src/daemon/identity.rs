//! This node's identity in the cluster: the CA certificate it trusts, and its own key and
//! certificate (CN = node id, OU = role), kept in `<data dir>/certs/`.
//!
//! The key never leaves the node: a first start makes a key and a CSR and has the cluster CA
//! sign it (on a manager, directly; on a joining node, through the `Join` service).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use shoal_manager::ca::{self, ClusterCa, Role};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The name every manager certificate carries: what agents verify they are talking to.
pub const MANAGER_NAME: &str = "swarm-manager.shoal";

#[derive(Clone)]
pub struct NodeCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

impl NodeCerts {
    /// The certificates saved by an earlier start, if any.
    pub fn load(data_dir: &Path) -> Result<Option<NodeCerts>> {
        let d = dir(data_dir);
        if !d.join("node.crt").exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            std::fs::read_to_string(d.join(name))
                .with_context(|| format!("cannot read {}", d.join(name).display()))
        };
        Ok(Some(NodeCerts {
            ca_pem: read("ca.crt")?,
            cert_pem: read("node.crt")?,
            key_pem: read("node.key")?,
        }))
    }

    /// A manager signs its own certificate with the cluster CA, valid `lifetime_secs`.
    pub fn issue_for_manager(
        ca: &ClusterCa,
        node_id: &str,
        lifetime_secs: i64,
    ) -> Result<NodeCerts> {
        let (key_pem, csr_pem) = ca::node_key_and_csr(node_id)?;
        let now = shoal_proto::now_ms() / 1000;
        let cert_pem = ca.sign_csr_for(&csr_pem, node_id, Role::Manager, now, lifetime_secs)?;
        Ok(NodeCerts {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        })
    }

    /// Writes the certificates (the key readable by root only), each file atomically.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let d = dir(data_dir);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for (name, text, mode) in [
            ("ca.crt", &self.ca_pem, 0o644),
            ("node.crt", &self.cert_pem, 0o644),
            ("node.key", &self.key_pem, 0o600),
        ] {
            let tmp = d.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, d.join(name))?;
        }
        Ok(())
    }

    /// The role this node's certificate grants.
    pub fn role(&self) -> Result<Role> {
        Ok(ca::identity_of(&self.cert_pem)?.role)
    }

    /// The node id this node's certificate names.
    pub fn node_id(&self) -> Result<String> {
        Ok(ca::identity_of(&self.cert_pem)?.node_id)
    }

    /// Client side: we prove who we are, and accept only a manager of our cluster.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(MANAGER_NAME)
    }
}
