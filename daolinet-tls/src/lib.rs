//! OpenFlow over TLS for DaoliNet, with mutual authentication, built on
//! rustls (ring provider).
//!
//! - Files are PEM, as `ovs-pki` makes them (`ovs-pki init`, `ovs-pki
//!   req+sign NAME switch|controller`), so Open vSwitch hosts take part with
//!   `ovs-vsctl set-ssl KEY CERT CACERT`.
//! - The controller ([`server_config`]) requires a client certificate signed
//!   by its CA (the switch CA) and **binds it to a datapath id**
//!   ([`dpid_of`]): the first word of the certificate's common name is the
//!   switch's datapath id (16 hex digits; `ovs-pki req+sign
//!   0000000000000001 switch` makes `CN=0000000000000001 id:<uuid>`), and a
//!   switch whose FEATURES_REPLY names another datapath is refused. A host
//!   can only ever be itself.
//! - Switches ([`client_config`]) check that the controller's certificate
//!   chains to their CA (the controller CA), and present their own. Like
//!   Open vSwitch they do not match a host name (controllers are addressed
//!   by IP and `ovs-pki` certificates name none).
//! - [`api_server_config`]: TLS for the REST API (server certificate only;
//!   clients authenticate with the bearer token).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use rustls;

/// Why the TLS set-up cannot be used; one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM object.
    #[error("{what} {path}: {why}")]
    File {
        /// Which option (`--tls-ca`, ...).
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination (e.g. the key does not match the
    /// certificate).
    #[error("{0}")]
    Config(String),
}

/// The three files of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the peer's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// This side's certificate (chain).
    pub cert: std::path::PathBuf,
    /// This side's private key.
    pub key: std::path::PathBuf,
}

/// The ring provider: rustls marks it deprecated for lacking post-quantum
/// key exchange, which Open vSwitch peers do not offer either; the
/// alternative (aws-lc-rs) builds a large C library for every build.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn file_err(what: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(what, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_err(what, path, format!("no private key: {e}")))
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("--tls-ca", &files.ca)? {
        roots.add(c).map_err(|e| {
            file_err(
                "--tls-ca",
                &files.ca,
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}

fn identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    Ok((
        load_certs("--tls-cert", &files.cert)?,
        load_key("--tls-key", &files.key)?,
    ))
}

fn config_err(files: &TlsFiles, e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!(
        "--tls-cert {} / --tls-key {}: {e}",
        files.cert.display(),
        files.key.display()
    ))
}

/// The controller's OpenFlow TLS: its certificate and key, and client
/// certificates required, chained to `files.ca` (the switch CA).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files)?), p.clone())
        .build()
        .map_err(|e| file_err("--tls-ca", &files.ca, e))?;
    let (certs, key) = identity(files)?;
    let cfg = rustls::ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| config_err(files, e))?;
    Ok(Arc::new(cfg))
}

/// TLS for the REST API: the server's certificate and key only.
pub fn api_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs("--api-tls-cert", cert)?;
    let key_der = load_key("--api-tls-key", key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            TlsError::Config(format!(
                "--api-tls-cert {} / --api-tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(Arc::new(cfg))
}

/// A switch's TLS: its certificate and key, and the controller's
/// certificate checked against `files.ca` (the controller CA).
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let p = provider();
    let verifier = Arc::new(ChainOnly {
        roots: roots(files)?,
        algs: p.signature_verification_algorithms,
    });
    let (certs, key) = identity(files)?;
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| config_err(files, e))?;
    Ok(Arc::new(cfg))
}

/// A client of the HTTPS REST API (`daolictl`): the server's certificate
/// must chain to `ca` (no host name is matched, as for switches).
pub fn api_client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let p = provider();
    let mut roots = RootCertStore::empty();
    for c in load_certs("--ca", ca)? {
        roots
            .add(c)
            .map_err(|e| file_err("--ca", ca, format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = Arc::new(ChainOnly {
        roots,
        algs: p.signature_verification_algorithms,
    });
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server name a switch presents (none is checked, see the crate docs).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

/// Checks that the controller's certificate chains to the CA (validity
/// dates, signatures, server-auth usage when the certificate names usages)
/// without matching a host name, as Open vSwitch does.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The datapath id a switch certificate is bound to: the first word of
/// its subject's common name, 16 hex digits (`0000000000000001`) or with
/// colons (`00:00:00:00:00:00:00:01`).
pub fn dpid_of(cert: &CertificateDer<'_>) -> Result<u64, String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| "certificate has no common name".to_string())?;
    let word = cn.split_whitespace().next().unwrap_or_default();
    parse_dpid(word).ok_or_else(|| {
        format!("certificate common name {cn:?} does not start with a datapath id (16 hex digits)")
    })
}

fn parse_dpid(s: &str) -> Option<u64> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let colons_ok = !s.contains(':') || (s.len() == 23 && s.split(':').all(|p| p.len() == 2));
    (hex.len() == 16 && colons_ok && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(&hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datapath_ids_in_common_names() {
        assert_eq!(parse_dpid("0000000000000001"), Some(1));
        assert_eq!(parse_dpid("00:00:00:00:00:00:ab:01"), Some(0xab01));
        for bad in [
            "1",
            "0x0000000000000001",
            "000000000000000g",
            "0000:0000:0000:0001",
            "",
        ] {
            assert_eq!(parse_dpid(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_and_empty_files_name_the_option_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_certs("--tls-cert", &empty).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-cert ") && e.contains("no certificate"),
            "{e}"
        );
        let e = load_key("--tls-key", &d.path().join("nope.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-key ") && e.contains("nope.pem"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}
