//! TLS and mutual TLS settings, checked before any connection so that a bad file is reported by
//! its path rather than as a failed handshake.

use std::fmt;
use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::{Error, Result};

/// PEM text and where it came from (a file path, or a label of the caller's choosing), which
/// errors name. `Debug` shows the origin and size only, never the bytes (one may be a key).
#[derive(Clone)]
#[non_exhaustive]
pub struct Pem {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl Pem {
    /// Reads a PEM file; the path is its origin.
    pub fn read(path: impl AsRef<Path>) -> Result<Pem> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))?;
        Ok(Pem { origin: path.display().to_string(), bytes })
    }

    /// PEM held in memory (from a secret store, say); `origin` names it in errors.
    pub fn from_bytes(origin: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Pem {
        Pem { origin: origin.into(), bytes: bytes.into() }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pem({}, {} bytes)", self.origin, self.bytes.len())
    }
}

/// A client certificate (chain, leaf first) and its private key, for mutual TLS.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientIdentity {
    pub cert: Pem,
    pub key: Pem,
}

/// TLS to a server started with `quiver serve --tls-cert/--tls-key`, mutual TLS when it also has
/// `--tls-client-ca`.
///
/// The server is verified against `ca` **only**: no system or webpki roots are consulted, since a
/// quiver server beside its clients carries a certificate of a private CA. The name checked is
/// the address's host (`https://127.0.0.1:50051` checks the IP 127.0.0.1, so the certificate needs
/// that IP among its subject alternative names) unless `domain` overrides it.
///
/// ```no_run
/// # fn demo() -> quiver_client::Result<()> {
/// use quiver_client::TlsOptions;
/// let tls = TlsOptions::from_files("/etc/quiver/ca.pem")?
///     .with_identity_files("/etc/quiver/client.pem", "/etc/quiver/client-key.pem")? // mutual TLS
///     .with_domain("quiver.internal");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsOptions {
    /// CA certificate(s) that signed the server's certificate: the only roots trusted.
    pub ca: Pem,
    /// Presented to a server that asks for a client certificate (`--tls-client-ca`).
    pub identity: Option<ClientIdentity>,
    /// Name to verify the server's certificate against instead of the address's host.
    pub domain: Option<String>,
}

impl TlsOptions {
    pub fn new(ca: Pem) -> Self {
        TlsOptions { ca, identity: None, domain: None }
    }

    /// Trusts the CA certificate(s) in the PEM file at `ca`.
    pub fn from_files(ca: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Pem::read(ca)?))
    }

    pub fn with_identity(self, cert: Pem, key: Pem) -> Self {
        TlsOptions { identity: Some(ClientIdentity { cert, key }), ..self }
    }

    /// Presents the certificate and key in these PEM files (mutual TLS).
    pub fn with_identity_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(self.with_identity(Pem::read(cert)?, Pem::read(key)?))
    }

    pub fn with_domain(self, domain: impl Into<String>) -> Self {
        TlsOptions { domain: Some(domain.into()), ..self }
    }

    /// Checks every part and builds tonic's configuration. Errors name the file (or origin) at fault.
    pub(crate) fn client_config(&self) -> Result<ClientTlsConfig> {
        let mut roots = RootCertStore::empty();
        for (i, der) in certificates(&self.ca, "CA certificate")?.into_iter().enumerate() {
            roots.add(der).map_err(|e| {
                Error::Tls(format!("CA certificate {}: certificate #{} is not a usable CA: {e}", self.ca.origin, i + 1))
            })?;
        }
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.bytes));
        if let Some(ClientIdentity { cert, key }) = &self.identity {
            let chain = certificates(cert, "client certificate")?;
            let key_der = PrivateKeyDer::from_pem_slice(&key.bytes).map_err(|e| {
                Error::Tls(format!(
                    "client key {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {e}",
                    key.origin
                ))
            })?;
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
                Error::Tls(format!("client key {} does not fit client certificate {}: {e}", key.origin, cert.origin))
            })?;
            config = config.identity(Identity::from_pem(&cert.bytes, &key.bytes));
        }
        if let Some(domain) = &self.domain {
            ServerName::try_from(domain.as_str())
                .map_err(|e| Error::Tls(format!("domain {domain:?}: not a DNS name or IP address: {e}")))?;
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}

/// The certificates of a PEM, at least one.
fn certificates(pem: &Pem, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what} {}: invalid PEM: {e}", pem.origin)))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what} {}: no CERTIFICATE block found", pem.origin)));
    }
    Ok(certs)
}
