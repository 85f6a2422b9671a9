//! TLS for the AMQPS listener, with rustls and its `ring` provider: loading the certificate,
//! key and CA bundle, RabbitMQ's `verify_peer` / `verify_none` and `fail_if_no_peer_cert`,
//! the TLS versions offered, and reading the identity of a client certificate for the
//! EXTERNAL mechanism (its subject in RabbitMQ's distinguished-name format, or its CN).

use crate::config::{TlsConfig, TlsVerify, TlsVersion};
use crate::connection::stream::TlsSession;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Installs the `ring` provider as the process default, so any rustls configuration built
/// without an explicit provider uses it (and never needs aws-lc-rs).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Errors setting up TLS.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    File {
        /// Which setting named the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination.
    Config(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::File { key, path, reason } => {
                write!(f, "tls.{key}: failed to load {path}: {reason}")
            }
            TlsError::Config(e) => write!(f, "tls: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Builds the acceptor for the AMQPS listener.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs("certfile", &cfg.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.keyfile).map_err(|e| TlsError::File {
        key: "keyfile",
        path: cfg.keyfile.display().to_string(),
        reason: e.to_string(),
    })?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = cfg
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match cfg.verify {
        TlsVerify::VerifyNone => builder.with_no_client_auth(),
        TlsVerify::VerifyPeer => {
            let Some(ca) = &cfg.cacertfile else {
                return Err(TlsError::Config(
                    "verify = \"verify_peer\" needs tls.cacertfile (the CA that signs client certificates)".into(),
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in load_certs("cacertfile", ca)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    key: "cacertfile",
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            // Without fail_if_no_peer_cert a client may present no certificate, but one it
            // presents must verify (RabbitMQ's verify_peer).
            let verifier = if cfg.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("certfile and keyfile: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The identity in a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject as RabbitMQ formats it: RDNs last to first, `CN=alice,O=Example,C=GB`.
    pub subject: String,
    /// The first common name, if any.
    pub common_name: Option<String>,
}

/// What TLS settled, read from an established server connection.
pub fn session(conn: &rustls::ServerConnection) -> TlsSession {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    let peer_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| peer_certificate(der.as_ref()));
    TlsSession {
        protocol,
        cipher,
        peer_cert,
    }
}

/// Reads the subject of a DER certificate.
pub fn peer_certificate(der: &[u8]) -> Option<PeerCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let mut rdns = Vec::new();
    for rdn in subject.iter() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|atv| {
                let oid = atv.attr_type().to_id_string();
                let name = short_name(&oid).map_or(oid.clone(), str::to_string);
                let value = atv
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|_| hex_value(atv.as_slice()));
                format!("{name}={}", escape_rdn_value(&value))
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Some(PeerCertificate {
        subject: rdns.join(","),
        common_name,
    })
}

/// RabbitMQ's short names for subject attributes (`rabbit_cert_info`).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "I",
        "2.5.4.44" => "GQ",
        "2.5.4.12" => "T",
        "2.5.4.46" => "DNQ",
        "2.5.4.6" => "C",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.65" => "PSEUDONYM",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn hex_value(bytes: &[u8]) -> String {
    let mut s = String::from("#");
    for b in bytes {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Escapes a value as RFC 4514 says (and RabbitMQ does).
fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_special_characters() {
        assert_eq!(escape_rdn_value("a,b"), "a\\,b");
        assert_eq!(escape_rdn_value(" x "), "\\ x\\ ");
        assert_eq!(escape_rdn_value("#1"), "\\#1");
        assert_eq!(escape_rdn_value("plain"), "plain");
    }
}
