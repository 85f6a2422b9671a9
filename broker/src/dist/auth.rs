//! The cookie and the challenge-response that proves two ends share it without sending
//! it: each side sends a random nonce, and each answers with HMAC-SHA256(cookie, label,
//! both nonces, its identity). Different labels for the two directions mean a proof can
//! never be replayed back to its sender.
//!
//! The cookie file is `$HOME/.warren.cookie` unless configured; a node creates it at first
//! start (20 random upper-case letters, as Erlang does) with mode 0600, and refuses one that
//! other users can read.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a cluster (and its CLI), with the TLS client identity this end
/// presents when the distribution port runs mutual TLS: what a distribution connection
/// needs to be accepted, carried together so every place that connects uses both.
#[derive(Clone)]
pub struct Cookie(Vec<u8>, Option<Arc<rustls::ClientConfig>>);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

impl Cookie {
    /// A cookie from its text (surrounding whitespace ignored).
    pub fn new(text: &str) -> Cookie {
        Cookie(text.trim().as_bytes().to_vec(), None)
    }

    /// The same cookie, connecting over mutual TLS with `tls` (see `dist::tls_connector`).
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Cookie {
        self.1 = Some(tls);
        self
    }

    /// The TLS client configuration connections use, when the distribution port runs TLS.
    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.1.as_ref()
    }
}

/// Errors reading or creating the cookie file.
#[derive(Debug)]
#[non_exhaustive]
pub enum CookieError {
    /// The file could not be read, created or written.
    Io(PathBuf, std::io::Error),
    /// Other users may read it.
    Permissions(PathBuf, u32),
    /// It is empty.
    Empty(PathBuf),
}

impl std::fmt::Display for CookieError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CookieError::Io(p, e) => write!(f, "cookie file {}: {e}", p.display()),
            CookieError::Permissions(p, mode) => write!(
                f,
                "cookie file {} must be accessible by its owner only (mode is {:o}; chmod 600 it)",
                p.display(),
                mode & 0o777
            ),
            CookieError::Empty(p) => write!(f, "cookie file {} is empty", p.display()),
        }
    }
}

impl std::error::Error for CookieError {}

/// `$HOME/.warren.cookie` (the current directory when HOME is unset).
pub fn default_cookie_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".warren.cookie")
}

/// Reads the cookie file.
pub fn read_cookie(path: &Path) -> Result<Cookie, CookieError> {
    let meta = std::fs::metadata(path).map_err(|e| CookieError::Io(path.to_path_buf(), e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CookieError::Permissions(path.to_path_buf(), mode));
    }
    let text = std::fs::read_to_string(path).map_err(|e| CookieError::Io(path.to_path_buf(), e))?;
    let cookie = Cookie::new(&text);
    if cookie.0.is_empty() {
        return Err(CookieError::Empty(path.to_path_buf()));
    }
    Ok(cookie)
}

/// Reads the cookie file, creating it with a random cookie (mode 0600) if it is missing.
pub fn read_or_create_cookie(path: &Path) -> Result<Cookie, CookieError> {
    if !path.exists() {
        let cookie: String = (0..20)
            .map(|_| char::from(b'A' + rand::random_range(0..26u8)))
            .collect();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CookieError::Io(dir.to_path_buf(), e))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(cookie.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| CookieError::Io(path.to_path_buf(), e))?;
                tracing::info!(path = %path.display(), "created the cookie file");
            }
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CookieError::Io(path.to_path_buf(), e)),
        }
    }
    read_cookie(path)
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    rand::random()
}

fn mac(cookie: &Cookie, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(&cookie.0).expect("HMAC takes a key of any length");
    m.update(label);
    for p in parts {
        // Length-prefixed, so no two different inputs concatenate to the same bytes.
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    m
}

const CLIENT_LABEL: &[u8] = b"warren-dist-v1 client proof";
const SERVER_LABEL: &[u8] = b"warren-dist-v1 server proof";

/// The client's proof: HMAC over the server's nonce, its own nonce, its role and name.
pub fn client_proof(
    cookie: &Cookie,
    server_nonce: &[u8],
    client_nonce: &[u8],
    role: &str,
    name: &str,
) -> Vec<u8> {
    mac(
        cookie,
        CLIENT_LABEL,
        &[server_nonce, client_nonce, role.as_bytes(), name.as_bytes()],
    )
    .finalize()
    .into_bytes()
    .to_vec()
}

/// Checks a client's proof in constant time.
pub fn verify_client_proof(
    cookie: &Cookie,
    server_nonce: &[u8],
    client_nonce: &[u8],
    role: &str,
    name: &str,
    proof: &[u8],
) -> bool {
    mac(
        cookie,
        CLIENT_LABEL,
        &[server_nonce, client_nonce, role.as_bytes(), name.as_bytes()],
    )
    .verify_slice(proof)
    .is_ok()
}

/// The server's proof: HMAC over both nonces and its node name.
pub fn server_proof(
    cookie: &Cookie,
    server_nonce: &[u8],
    client_nonce: &[u8],
    node: &str,
) -> Vec<u8> {
    mac(
        cookie,
        SERVER_LABEL,
        &[server_nonce, client_nonce, node.as_bytes()],
    )
    .finalize()
    .into_bytes()
    .to_vec()
}

/// Checks a server's proof in constant time.
pub fn verify_server_proof(
    cookie: &Cookie,
    server_nonce: &[u8],
    client_nonce: &[u8],
    node: &str,
    proof: &[u8],
) -> bool {
    mac(
        cookie,
        SERVER_LABEL,
        &[server_nonce, client_nonce, node.as_bytes()],
    )
    .verify_slice(proof)
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_need_the_same_cookie_and_do_not_reflect() {
        let a = Cookie::new("SECRET");
        let b = Cookie::new("OTHER");
        let (sn, cn) = (nonce(), nonce());
        let p = client_proof(&a, &sn, &cn, "ctl", "warrenctl");
        assert!(verify_client_proof(&a, &sn, &cn, "ctl", "warrenctl", &p));
        assert!(!verify_client_proof(&b, &sn, &cn, "ctl", "warrenctl", &p));
        assert!(!verify_client_proof(&a, &sn, &cn, "node", "warrenctl", &p));
        // A client proof is not a valid server proof.
        assert!(!verify_server_proof(&a, &sn, &cn, "warrenctl", &p));
        let s = server_proof(&a, &sn, &cn, "warren@h");
        assert!(verify_server_proof(&a, &sn, &cn, "warren@h", &s));
    }

    #[test]
    fn creates_a_private_cookie_file_and_refuses_a_readable_one() {
        let dir = tempfile_dir();
        let path = dir.join("cookie");
        let c1 = read_or_create_cookie(&path).expect("created");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c2 = read_or_create_cookie(&path).expect("read");
        assert_eq!(c1.0, c2.0);
        assert_eq!(c1.0.len(), 20);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_cookie(&path),
            Err(CookieError::Permissions(..))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "warren-cookie-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
