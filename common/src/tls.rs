//! Mutual-TLS configuration for QUIC endpoints, and the peer identity that names a tenant.
//!
//! Both sides load a PEM certificate chain, its key and the cluster CA. Servers require a client
//! certificate signed by that CA; clients verify the server against the same CA. The client
//! certificate's common name is the tenant: the server keeps each tenant's pages apart.

use std::{path::Path, sync::Arc};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore,
};

use crate::{certs, protocol::ALPN, transport};

/// Why a TLS configuration could not be built or a peer not identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The rustls configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer certificate could not be parsed or has no common name.
    #[error("peer certificate has no usable common name: {0}")]
    BadPeerCertificate(String),
}

/// Paths of the PEM files one endpoint needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Cluster CA certificate.
    pub ca: std::path::PathBuf,
    /// This endpoint's certificate chain.
    pub cert: std::path::PathBuf,
    /// This endpoint's private key.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// The files named `NAME.pem` / `NAME.key` with `ca.pem` in a certificate directory.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join(certs::CA_CERT),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a QUIC server configuration that requires client certificates signed by the CA; `mtu`
/// as in [`transport::transport_config`].
pub fn server_config(files: &TlsFiles, mtu: Option<u16>) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport::transport_config(mtu)));
    Ok(config)
}

/// Builds a QUIC client configuration that presents a client certificate and trusts only the CA;
/// `mtu` as in [`transport::transport_config`].
pub fn client_config(files: &TlsFiles, mtu: Option<u16>) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport::transport_config(mtu)));
    Ok(config)
}

/// Returns the common name of the certificate a connected peer presented.
pub fn peer_common_name(conn: &quinn::Connection) -> Result<String, TlsError> {
    common_name_of_chain(conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?)
}

/// The common name of the leaf certificate of a peer identity as quinn's TLS session gives it.
pub fn common_name_of_chain(identity: Box<dyn std::any::Any>) -> Result<String, TlsError> {
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    common_name(leaf)
}

/// Extracts the subject common name from a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadPeerCertificate(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| TlsError::BadPeerCertificate("no common name".into()))?;
    let cn = cn
        .as_str()
        .map_err(|e| TlsError::BadPeerCertificate(e.to_string()))?;
    if cn.is_empty() {
        return Err(TlsError::BadPeerCertificate("empty common name".into()));
    }
    Ok(cn.to_string())
}
