//! The cluster's certificate authority and join tokens.
//!
//! Swarm's scheme, which operators know: the managers hold a CA; a node joins with a token
//! `SWMTKN-1-<CA digest>-<secret>` that pins the CA (the joiner refuses a manager whose CA does
//! not hash to the digest) and proves the joiner may join (the secret, separate for workers and
//! managers). The joiner sends a CSR and receives a certificate whose subject carries its
//! identity: CN = node id, OU = role, O = cluster id. Every node-to-node connection then uses
//! mutual TLS with these certificates, and every RPC is authorised by the role in the peer's
//! certificate.
//!
//! Pure except for randomness: no files, no sockets. Times come in as arguments.

mod token;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use token::{JoinToken, TokenError};

/// Swarm's default node certificate lifetime.
pub const DEFAULT_NODE_CERT_DAYS: i64 = 90;
/// The same, in seconds.
pub const DEFAULT_NODE_CERT_SECS: i64 = DEFAULT_NODE_CERT_DAYS * 86_400;
/// The shortest node certificate lifetime accepted (tests use it; operators want days).
pub const MIN_NODE_CERT_SECS: i64 = 5;
/// How far a node certificate's validity starts before its issue, for clocks that are a
/// little behind: an hour, or a tenth of a short lifetime.
const MAX_BACKDATE_SECS: i64 = 3600;
/// The CA's lifetime (Swarm's: 20 years).
pub const CA_DAYS: i64 = 20 * 365;

const OU_WORKER: &str = "swarm-worker";
const OU_MANAGER: &str = "swarm-manager";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create a key or certificate: {0}")]
    Generate(String),
    #[error(
        "the stored cluster CA is unreadable ({0}): restore the manager's data dir from a backup"
    )]
    BadCa(String),
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("the certificate is unreadable: {0}")]
    BadCertificate(String),
    #[error("the certificate was not issued by this cluster's CA")]
    WrongCa,
    #[error("the certificate is not valid now (valid from {not_before} to {not_after}, unix seconds): renew it or rejoin the node")]
    Expired { not_before: i64, not_after: i64 },
    #[error("the certificate carries no shoal node identity (CN = node id, OU = role)")]
    NoIdentity,
}

/// A node's role, as its certificate states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Role::Worker => OU_WORKER,
            Role::Manager => OU_MANAGER,
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    cluster_id: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// A new CA for `cluster_id`, valid from `now` (unix seconds).
    pub fn generate(cluster_id: &str, now: i64) -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "shoal-ca");
        name.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(now - 3600)?; // tolerate clock skew between nodes
        params.not_after = at(now + CA_DAYS * 86_400)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        ClusterCa::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The CA as stored (in the Raft store, replicated to every manager).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CaError::BadCa(e.to_string()))?;
        let cert_der = pem_der(cert_pem, "CERTIFICATE").map_err(CaError::BadCa)?;
        let (_, cert) =
            X509Certificate::from_der(&cert_der).map_err(|e| CaError::BadCa(e.to_string()))?;
        let cluster_id = first_attr(cert.subject().iter_organization()).unwrap_or_default();
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            cluster_id,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// What a join token pins: sha256 of the CA certificate (DER).
    pub fn digest(&self) -> [u8; 32] {
        ca_digest(&self.cert_der)
    }

    /// Issues a node certificate for the key in `csr_pem`. The subject is ours, not the CSR's:
    /// a joiner cannot choose its own identity or role.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        now: i64,
        days: i64,
    ) -> Result<String, CaError> {
        self.sign_csr_for(csr_pem, node_id, role, now, days * 86_400)
    }

    /// [`sign_csr`](Self::sign_csr) for a lifetime in seconds (the cluster's cert expiry).
    pub fn sign_csr_for(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        now: i64,
        lifetime_secs: i64,
    ) -> Result<String, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id);
        name.push(DnType::OrganizationalUnitName, role.unit());
        name.push(DnType::OrganizationName, self.cluster_id.as_str());
        let mut params =
            CertificateParams::new(vec![node_id.to_string(), format!("{}.shoal", role.unit())])
                .map_err(gen_err)?;
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let lifetime = lifetime_secs.max(1);
        params.not_before = at(now - (lifetime / 10).min(MAX_BACKDATE_SECS))?;
        params.not_after = at(now + lifetime)?;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(gen_err)?;
        Ok(cert.pem())
    }

    /// Checks that `cert_pem` was issued by this CA and is valid at `now`, and returns whom it
    /// names. TLS does the same on every connection; this is for tokens of trust outside TLS.
    pub fn verify(&self, cert_pem: &str, now: i64) -> Result<NodeIdentity, CaError> {
        let der = pem_der(cert_pem, "CERTIFICATE").map_err(CaError::BadCertificate)?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
        let (_, ca) =
            X509Certificate::from_der(&self.cert_der).map_err(|e| CaError::BadCa(e.to_string()))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| CaError::WrongCa)?;
        let identity = identity_of_der(&der)?;
        if now < identity.not_before || now > identity.not_after {
            return Err(CaError::Expired {
                not_before: identity.not_before,
                not_after: identity.not_after,
            });
        }
        Ok(identity)
    }
}

/// A fresh key for a node and a CSR for it, both PEM. The key never leaves the node.
pub fn node_key_and_csr(node_id: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![node_id.to_string()]).map_err(gen_err)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_id);
    params.distinguished_name = name;
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    let csr_pem = csr.pem().map_err(gen_err)?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Who a (PEM) certificate names. Does not check who issued it: see [`ClusterCa::verify`].
pub fn identity_of(cert_pem: &str) -> Result<NodeIdentity, CaError> {
    let der = pem_der(cert_pem, "CERTIFICATE").map_err(CaError::BadCertificate)?;
    identity_of_der(&der)
}

/// Who a (DER) certificate names: what the TLS layer hands over for a peer.
pub fn identity_of_der(der: &[u8]) -> Result<NodeIdentity, CaError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let subject = cert.subject();
    let node_id = first_attr(subject.iter_common_name()).ok_or(CaError::NoIdentity)?;
    let role = match first_attr(subject.iter_organizational_unit()).as_deref() {
        Some(OU_WORKER) => Role::Worker,
        Some(OU_MANAGER) => Role::Manager,
        _ => return Err(CaError::NoIdentity),
    };
    let cluster_id = first_attr(subject.iter_organization()).unwrap_or_default();
    let validity = cert.validity();
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// When to renew a certificate: at a random 50–80 % of its lifetime (Swarm's rule), so a
/// cluster's nodes don't all renew at once. `fraction` is a random number in [0, 1).
pub fn renewal_time(identity: &NodeIdentity, fraction: f64) -> i64 {
    let life = (identity.not_after - identity.not_before).max(0) as f64;
    let share = 0.5 + 0.3 * fraction.clamp(0.0, 1.0);
    identity.not_before + (life * share) as i64
}

pub fn ca_digest(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// The digest a join token pins, of a CA certificate given as PEM.
pub fn pem_digest(cert_pem: &str) -> Result<[u8; 32], CaError> {
    let der = pem_der(cert_pem, "CERTIFICATE").map_err(CaError::BadCertificate)?;
    Ok(ca_digest(&der))
}

fn first_attr<'a>(
    mut attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    attrs
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

/// The DER inside the first PEM block of `label`.
fn pem_der(pem_text: &str, label: &str) -> Result<Vec<u8>, String> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let pem = pem.map_err(|e| format!("bad PEM: {e}"))?;
        if pem.label == label {
            return Ok(pem.contents);
        }
    }
    Err(format!("no {label} PEM block found"))
}

fn at(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CaError::Generate(e.to_string()))
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_381_629;

    #[test]
    fn issues_node_certificates_that_carry_identity_and_role() {
        let ca = ClusterCa::generate("cluster1", NOW).expect("ca");
        let (_key, csr) = node_key_and_csr("ignored-by-ca").expect("csr");
        let cert = ca
            .sign_csr(&csr, "node1", Role::Manager, NOW, DEFAULT_NODE_CERT_DAYS)
            .expect("signed");
        let id = ca.verify(&cert, NOW + 10).expect("valid");
        assert_eq!(id.node_id, "node1", "the CA, not the CSR, names the node");
        assert_eq!(id.role, Role::Manager);
        assert_eq!(id.cluster_id, "cluster1");
        assert_eq!(id.not_after - NOW, DEFAULT_NODE_CERT_DAYS * 86_400);
    }

    #[test]
    fn refuses_another_cas_certificate_and_expired_ones() {
        let ca = ClusterCa::generate("c1", NOW).expect("ca");
        let other = ClusterCa::generate("c2", NOW).expect("other ca");
        let (_k, csr) = node_key_and_csr("n").expect("csr");
        let foreign = other
            .sign_csr(&csr, "n", Role::Worker, NOW, 1)
            .expect("signed");
        assert!(matches!(ca.verify(&foreign, NOW), Err(CaError::WrongCa)));
        let short = ca
            .sign_csr(&csr, "n", Role::Worker, NOW, 1)
            .expect("signed");
        assert!(matches!(
            ca.verify(&short, NOW + 2 * 86_400),
            Err(CaError::Expired { .. })
        ));
    }

    #[test]
    fn ca_survives_a_round_trip_through_pem() {
        let ca = ClusterCa::generate("c1", NOW).expect("ca");
        let back = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("reloads");
        assert_eq!(back.digest(), ca.digest());
        assert_eq!(pem_digest(ca.cert_pem()).expect("digest"), ca.digest());
        assert_eq!(back.cluster_id(), "c1");
        let (_k, csr) = node_key_and_csr("n").expect("csr");
        let cert = back
            .sign_csr(&csr, "n", Role::Worker, NOW, 1)
            .expect("signed");
        ca.verify(&cert, NOW)
            .expect("the reloaded CA signs as the original");
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_lifetime() {
        let id = NodeIdentity {
            node_id: "n".into(),
            role: Role::Worker,
            cluster_id: String::new(),
            not_before: 0,
            not_after: 1000,
        };
        assert_eq!(renewal_time(&id, 0.0), 500);
        assert_eq!(renewal_time(&id, 1.0), 800);
        assert!((500..=800).contains(&renewal_time(&id, 0.42)));
    }

    #[test]
    fn short_lived_certificates_are_backdated_a_tenth_of_their_life() {
        let ca = ClusterCa::generate("c1", NOW).expect("ca");
        let (_k, csr) = node_key_and_csr("n").expect("csr");
        let cert = ca
            .sign_csr_for(&csr, "n", Role::Worker, NOW, 20)
            .expect("signed");
        let id = ca.verify(&cert, NOW).expect("valid now");
        assert_eq!((id.not_before, id.not_after), (NOW - 2, NOW + 20));
        // Renewed between 50 % and 80 % of its life: after issue, before expiry.
        let renew = renewal_time(&id, 0.0);
        assert!(renew > NOW && renew < id.not_after, "{renew}");
        assert!(matches!(
            ca.verify(&cert, NOW + 21),
            Err(CaError::Expired { .. })
        ));
        let long = ca
            .sign_csr(&csr, "n", Role::Worker, NOW, DEFAULT_NODE_CERT_DAYS)
            .expect("signed");
        let id = ca.verify(&long, NOW).expect("valid");
        assert_eq!(NOW - id.not_before, 3600, "an hour for clock skew");
    }

    #[test]
    fn garbage_is_refused_cleanly() {
        let ca = ClusterCa::generate("c1", NOW).expect("ca");
        assert!(matches!(
            ca.sign_csr("not a csr", "n", Role::Worker, NOW, 1),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            identity_of("nope"),
            Err(CaError::BadCertificate(_))
        ));
        assert!(ClusterCa::from_pem("x", "y").is_err());
    }
}
