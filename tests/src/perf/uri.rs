//! AMQP URIs (`amqp://user:pass@host:port/vhost`) as RabbitMQ's clients read them: the user,
//! password and vhost are percent-decoded, a missing port is 5672, and an empty path is the
//! vhost `/` (spelled `%2f` in a URI).

use anyhow::{anyhow, bail, Context};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
}

impl AmqpUri {
    /// `host:port`, bracketing an IPv6 address, for `TcpStream::connect`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("truncated percent escape in {s:?}"))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| anyhow!("bad percent escape %{hex} in {s:?}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("{s:?} does not decode to UTF-8"))
}

impl std::str::FromStr for AmqpUri {
    type Err = anyhow::Error;

    fn from_str(uri: &str) -> anyhow::Result<Self> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| anyhow!("only amqp:// URIs are supported, got {uri:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // Query parameters (heartbeat=..., etc.) are not used by the load generator.
        let path = path.split('?').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
                None => (percent_decode(ui)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("unclosed [ in {uri:?}"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("port in {uri:?}"))?,
                None if after.is_empty() => 5672,
                None => bail!("unexpected {after:?} after the address in {uri:?}"),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().with_context(|| format!("port in {uri:?}"))?,
                ),
                None => (hostport.to_string(), 5672),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path)?
        };
        Ok(AmqpUri {
            host,
            port,
            user,
            password,
            vhost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u: AmqpUri = "amqp://bob:s%40cret@127.0.0.1:5682/%2f"
            .parse()
            .expect("valid");
        assert_eq!(u.user, "bob");
        assert_eq!(u.password, "s@cret");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 5682);
        assert_eq!(u.vhost, "/");
        assert_eq!(u.addr(), "127.0.0.1:5682");
    }

    #[test]
    fn defaults() {
        let u: AmqpUri = "amqp://localhost".parse().expect("valid");
        assert_eq!(u.port, 5672);
        assert_eq!(u.vhost, "/");
        assert_eq!(u.user, "guest");
        assert_eq!(u.password, "guest");
        let u: AmqpUri = "amqp://guest:guest@localhost/prod?heartbeat=0"
            .parse()
            .expect("valid");
        assert_eq!(u.vhost, "prod");
    }

    #[test]
    fn ipv6() {
        let u: AmqpUri = "amqp://a:b@[::1]:5673/v".parse().expect("valid");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5673);
        assert_eq!(u.addr(), "[::1]:5673");
    }

    #[test]
    fn rejects_bad_uris() {
        assert!("http://x".parse::<AmqpUri>().is_err());
        assert!("amqp://h:notaport".parse::<AmqpUri>().is_err());
        assert!("amqp://h/%zz".parse::<AmqpUri>().is_err());
    }
}
