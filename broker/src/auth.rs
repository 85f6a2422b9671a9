//! Authentication: SASL PLAIN and AMQPLAIN responses, and RabbitMQ's password hashes
//! (`rabbit_password_hashing_sha256` and `_sha512`: base64 of a 4-byte salt followed by
//! digest(salt ++ password)), so that definitions exported from RabbitMQ keep working.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use warren_amqp::{AMQPValue, FieldTable};

/// The password hashing schemes of RabbitMQ that Warren reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashingAlgorithm {
    /// `rabbit_password_hashing_sha256` (RabbitMQ's default since 3.6).
    #[default]
    #[serde(rename = "rabbit_password_hashing_sha256")]
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    #[serde(rename = "rabbit_password_hashing_sha512")]
    Sha512,
}

impl HashingAlgorithm {
    /// RabbitMQ's module name for the scheme.
    pub fn name(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    /// Parses RabbitMQ's module name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rabbit_password_hashing_sha256" => Some(HashingAlgorithm::Sha256),
            "rabbit_password_hashing_sha512" => Some(HashingAlgorithm::Sha512),
            _ => None,
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashingAlgorithm::Sha256 => 32,
            HashingAlgorithm::Sha512 => 64,
        }
    }
}

/// Hashes a password with a fresh random salt (SHA-256, RabbitMQ's default).
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(HashingAlgorithm::Sha256, &salt, password)
}

fn hash_with_salt(algorithm: HashingAlgorithm, salt: &[u8], password: &str) -> String {
    let mut out = salt.to_vec();
    match algorithm {
        HashingAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            out.extend_from_slice(&h.finalize());
        }
        HashingAlgorithm::Sha512 => {
            let mut h = Sha512::new();
            h.update(salt);
            h.update(password.as_bytes());
            out.extend_from_slice(&h.finalize());
        }
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// True when `hash` is a well-formed hash of the given scheme (a definitions import
/// checks this so that a typo does not lock a user out silently). An empty hash is a user
/// without a password.
pub fn is_valid_hash(algorithm: HashingAlgorithm, hash: &str) -> bool {
    hash.is_empty()
        || base64::engine::general_purpose::STANDARD
            .decode(hash)
            .is_ok_and(|raw| raw.len() == 4 + algorithm.digest_len())
}

/// True when `password` matches a stored SHA-256 hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    verify_password_with(HashingAlgorithm::Sha256, hash, password)
}

/// True when `password` matches a stored hash of the given scheme. An empty hash matches
/// nothing (a user without a password logs in only with EXTERNAL).
pub fn verify_password_with(algorithm: HashingAlgorithm, hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() != 4 + algorithm.digest_len() {
        return false;
    }
    let expected = hash_with_salt(algorithm, &raw[..4], password);
    // Compare without an early exit, so timing says nothing about where they differ.
    expected.len() == hash.len()
        && expected
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Extracts user name and password from a SASL response.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut buf = (response.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(response);
            if !warren_amqp::wire::field_table_within_limit(&buf) {
                return None;
            }
            let (rest, table) = warren_amqp::wire::parse_field_table(&buf[..]).ok()?;
            if !rest.is_empty() {
                return None;
            }
            Some((string(&table, "LOGIN")?, string(&table, "PASSWORD")?))
        }
        _ => None,
    }
}

fn string(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_rabbitmq_sha256_hashes() {
        // The hash RabbitMQ's docs give for the password "test12".
        let h = hash_with_salt(
            HashingAlgorithm::Sha256,
            &[0x90, 0x8D, 0xC6, 0x0A],
            "test12",
        );
        assert!(verify_password(&h, "test12"));
        assert!(!verify_password(&h, "test13"));
        assert!(verify_password(&hash_password("guest"), "guest"));
        assert!(!verify_password("not base64!", "guest"));
        assert!(!verify_password("", ""));
    }

    #[test]
    fn verifies_a_sha512_hash_rabbitmq_accepted() {
        // A user imported into RabbitMQ 3.10.8 with this hash logged in with this password.
        let h = "AQIDBEVNf7VRlUhxbKoO6hqBUwyufmZqkf2Gg9AfROjQI0as3AP+78sg4pwoQu9YjLaEDzKOqNh82qFvB9LZm0GP+Eg=";
        assert!(verify_password_with(
            HashingAlgorithm::Sha512,
            h,
            "policy-secret"
        ));
        assert!(!verify_password_with(
            HashingAlgorithm::Sha512,
            h,
            "policy-secreT"
        ));
        assert!(!verify_password_with(
            HashingAlgorithm::Sha256,
            h,
            "policy-secret"
        ));
        assert!(is_valid_hash(HashingAlgorithm::Sha512, h));
        assert!(!is_valid_hash(HashingAlgorithm::Sha256, h));
    }

    #[test]
    fn parses_plain_and_amqplain() {
        assert_eq!(
            parse_response("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_response("PLAIN", b"guest"), None);
        let mut t = FieldTable::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("bob".into()));
        t.insert("PASSWORD".into(), AMQPValue::LongString("pw".into()));
        let full = crate::args::table_bytes(&t);
        assert_eq!(
            parse_response("AMQPLAIN", &full[4..]),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(parse_response("AMQPLAIN", &[1, 2, 3]), None);
    }
}
