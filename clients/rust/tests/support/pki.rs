//! Certificates for the TLS tests, made fresh in each run with rcgen (like
//! tests/e2e/test_server_tls.py on the Python side): a CA, a server certificate for
//! 127.0.0.1/localhost, a client certificate, and a second CA with a certificate of its own, which
//! the first CA's holders must refuse.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM files in one folder.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed neither the server nor the client.
    pub other_ca: PathBuf,
    /// A client certificate (and key) from `other_ca`.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// (certificate PEM, key PEM) signed by `issuer`.
fn leaf(name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Makes every certificate and writes them under `dir` (emptied first).
    pub fn new(dir: &Path) -> Pki {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let (ca_pem, issuer) = ca("quiver test CA");
        let (server_cert, server_key) =
            leaf("quiver server", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let (client_cert, client_key) = leaf("quiver client", &[], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (other_ca_pem, other) = ca("other CA");
        let (stranger_cert, stranger_key) = leaf("stranger", &[], ExtendedKeyUsagePurpose::ClientAuth, &other);
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            other_ca: write("other-ca.pem", &other_ca_pem),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger-key.pem", &stranger_key),
        }
    }

    /// `quiver serve` flags: TLS, and mutual TLS (client certificates of our CA required) if asked.
    pub fn serve_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.server_cert.display().to_string(),
            "--tls-key".to_owned(),
            self.server_key.display().to_string(),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".to_owned(), self.ca.display().to_string()]);
        }
        flags
    }
}
