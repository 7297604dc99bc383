//! Certificates made at test time: a throwaway CA and the server and client
//! certificates it signs, for TLS tests of pgfleet's gRPC port and of
//! PostgreSQL ([`crate::PgCluster::start_with_tls`]). Nothing is read from or
//! written to the system's trust stores.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `{stem}.crt` and `{stem}.key` into `dir`; returns their paths.
    pub fn write_to(&self, dir: &Path, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem).with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }
}

/// A certificate authority that lives as long as the test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name` (its common name).
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)
            .with_context(|| format!("making test CA {name}"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM: what clients (or servers, for client
    /// certificates) trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert_pem()).with_context(|| format!("writing {}", path.display()))
    }

    /// A server certificate for `names` (DNS names or IP addresses, e.g.
    /// `localhost` and `127.0.0.1`).
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<IssuedCert> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name = common_name(names.first().map_or("server", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with common name `name`.
    pub fn client_cert(&self, name: &str) -> anyhow::Result<IssuedCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> anyhow::Result<IssuedCert> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a test certificate")?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
