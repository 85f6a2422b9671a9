//! Authentication: SASL PLAIN and AMQPLAIN responses, and RabbitMQ's password hashes
//! (`rabbit_password_hashing_sha256`: base64 of a 4-byte salt followed by
//! sha256(salt ++ password)), so that definitions exported from RabbitMQ keep working.

use base64::Engine;
use sha2::{Digest, Sha256};
use warren_amqp::{AMQPValue, FieldTable};

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// True when `password` matches a stored hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let expected = hash_with_salt(&raw[..4], password);
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
        let h = hash_with_salt(&[0x90, 0x8D, 0xC6, 0x0A], "test12");
        assert!(verify_password(&h, "test12"));
        assert!(!verify_password(&h, "test13"));
        assert!(verify_password(&hash_password("guest"), "guest"));
        assert!(!verify_password("not base64!", "guest"));
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
