//! TLS for the server stream (`--server https://...`): a rustls client
//! configuration (ring provider) that trusts the host's root certificates
//! plus an optional extra CA (`--tls-ca PEM`, for self-signed servers), and
//! plain words for the TLS failures a user can fix.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, RootCertStore};

use crate::{AgentError, Result};

/// The client configuration for `wss://`: the system roots, plus every
/// certificate in `extra_ca` (a PEM file) when given.
///
/// An unreadable `extra_ca`, or one without any certificate, is an error
/// naming the file; missing system roots are not (the extra CA may be all
/// that is needed), but with neither there is nothing to trust and that is
/// an error too.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system root certificates: {e}");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| {
                AgentError::Invalid(format!("--tls-ca {}: unusable CA certificate: {e}", path.display()))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(AgentError::Tls(
            "no trusted root certificates: the host has none and no --tls-ca PEM was given".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; an error names the file when it cannot
/// be read or holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| AgentError::io(format!("--tls-ca {}", path.display()), e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Invalid(format!("--tls-ca {}: not a PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AgentError::Invalid(format!(
            "--tls-ca {}: no CERTIFICATE block found",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls error inside an I/O error from a TLS handshake, if any.
pub(crate) fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// What a failed handshake with `url` means, in words that say what to do.
pub(crate) fn explain(url: &str, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's TLS certificate at {url} is not trusted (unknown issuer): it is not signed by a system \
             root CA; pass --tls-ca PEM with the CA certificate that signed it (for a self-signed server, its \
             certificate)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's TLS certificate at {url} is not valid for this host name: use a --server URL with a \
             name or IP the certificate lists ({e})"
        ),
        rustls::Error::InvalidCertificate(c) => {
            format!("the server's TLS certificate at {url} is not trusted: {c:?}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server at {url} did not answer with TLS ({e}): is it serving plain HTTP? then use an http:// URL, \
             or start the server with --tls-cert/--tls-key"
        ),
        other => format!("TLS handshake with {url} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn a_self_signed_ca_is_accepted() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert!(client_config(Some(&ca)).is_ok());
    }

    #[test]
    fn unknown_issuer_says_what_to_do() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let m = explain("wss://h:1/v1/agent/stream", &e);
        assert!(m.contains("not trusted") && m.contains("--tls-ca"), "{m}");
    }
}
