//! TLS for the metadata service (rustls): the service presents a certificate; clients check it
//! against a CA file (or trust the service's own self-signed certificate given as the CA).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{MetaError, MetaResult};

fn read_certs(path: &Path) -> MetaResult<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| MetaError::Format(format!("reading certificates from {}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| MetaError::Format(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(MetaError::Format(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The service's side: its certificate chain and private key, both PEM.
pub fn acceptor(cert: &Path, key: &Path) -> MetaResult<tokio_rustls::TlsAcceptor> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| MetaError::Format(format!("reading the private key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| MetaError::Format(format!("the TLS certificate and key do not fit together: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A client's side: trusts the certificates in `ca` (PEM) for the service named `host`.
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    pub fn new(ca: &Path, host: &str) -> MetaResult<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|e| MetaError::Format(format!("{}: {e}", ca.display())))?;
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| MetaError::Format(format!("{host:?} is not a valid TLS server name: {e}")))?;
        Ok(TlsClient { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name })
    }
}
