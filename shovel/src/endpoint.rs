//! One end's URI: RabbitMQ's AMQP URI syntax, with the TLS options of its query string
//! (`cacertfile`, `certfile`, `keyfile`, `verify`, `server_name_indication`) mapped onto
//! lapin's rustls configuration, and `amqp://` without a host meaning the local node of an
//! embedded shovel. Connecting reads the certificate files each time, so a renewed
//! certificate is used at the next reconnect.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// Query parameters passed on to lapin.
const CLIENT_PARAMS: &[&str] = &[
    "heartbeat",
    "connection_timeout",
    "channel_max",
    "frame_max",
    "auth_mechanism",
];

/// TLS query parameters RabbitMQ accepts that need nothing from us.
const IGNORED_TLS_PARAMS: &[&str] = &["fail_if_no_peer_cert", "depth"];

/// One end's URI, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The URI as written, for error texts (see `display` for status).
    uri: String,
    /// The URI lapin connects to (TLS options removed); `None` for the local node.
    remote: Option<String>,
    /// The vhost of a local-node URI.
    local_vhost: String,
    /// `cacertfile`.
    cacertfile: Option<String>,
    /// `certfile` and `keyfile`.
    identity: Option<(String, String)>,
}

impl Endpoint {
    /// Parses a URI; `vhost` is the vhost a host-less (local node) URI without a path uses.
    pub fn parse(uri: &str, vhost: &str) -> Result<Endpoint, String> {
        let url =
            url::Url::parse(uri).map_err(|e| format!("'{}' is not a URI: {e}", redact(uri)))?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            s => {
                return Err(format!(
                    "'{}': the scheme is '{s}', not amqp or amqps",
                    redact(uri)
                ))
            }
        };
        let mut cacertfile = None;
        let (mut certfile, mut keyfile) = (None, None);
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                k if CLIENT_PARAMS.contains(&k) => kept.push((k.to_owned(), v.into_owned())),
                k if IGNORED_TLS_PARAMS.contains(&k) => {}
                "cacertfile" => cacertfile = Some(v.into_owned()),
                "certfile" => certfile = Some(v.into_owned()),
                "keyfile" => keyfile = Some(v.into_owned()),
                "verify" => match v.as_ref() {
                    "verify_peer" => {}
                    "verify_none" => {
                        return Err(format!(
                            "'{}': verify=verify_none is not supported; give cacertfile to trust a private CA",
                            redact(uri)
                        ))
                    }
                    other => {
                        return Err(format!(
                            "'{}': verify should be verify_peer, not '{other}'",
                            redact(uri)
                        ))
                    }
                },
                "server_name_indication" => {
                    if url.host_str() != Some(v.as_ref()) {
                        return Err(format!(
                            "'{}': server_name_indication must be the URI's host (the name checked in the certificate)",
                            redact(uri)
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "'{}': unsupported URI query parameter '{other}'",
                        redact(uri)
                    ))
                }
            }
        }
        if !tls && (cacertfile.is_some() || certfile.is_some() || keyfile.is_some()) {
            return Err(format!(
                "'{}': TLS options need an amqps:// URI",
                redact(uri)
            ));
        }
        let identity = match (certfile, keyfile) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "'{}': certfile and keyfile go together",
                    redact(uri)
                ))
            }
        };
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            if tls {
                return Err(format!("'{}': amqps:// needs a host", redact(uri)));
            }
            let path = url.path().trim_start_matches('/');
            let local_vhost = if path.is_empty() {
                vhost.to_owned()
            } else {
                percent_decode(path)?
            };
            return Ok(Endpoint {
                uri: uri.to_owned(),
                remote: None,
                local_vhost,
                cacertfile: None,
                identity: None,
            });
        }
        let mut clean = url.clone();
        if kept.is_empty() {
            clean.set_query(None);
        } else {
            clean.query_pairs_mut().clear().extend_pairs(kept);
        }
        // lapin's own parser has the last word on what it can connect to.
        clean
            .as_str()
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("'{}' is not a valid AMQP URI: {e}", redact(uri)))?;
        Ok(Endpoint {
            uri: uri.to_owned(),
            remote: Some(clean.to_string()),
            local_vhost: String::new(),
            cacertfile,
            identity,
        })
    }

    /// The URI without its password, for status and headers.
    pub fn display(&self) -> String {
        redact(&self.uri)
    }

    /// True when this URI names the local node of an embedded shovel.
    pub fn is_local(&self) -> bool {
        self.remote.is_none()
    }

    /// Connects; `local` turns a vhost into a URI of the local node (embedded shovels).
    pub async fn connect(
        &self,
        local: Option<&crate::LocalNode>,
        name: &str,
        timeout: Duration,
    ) -> Result<Connection, String> {
        let uri = match (&self.remote, local) {
            (Some(u), _) => u.clone(),
            (None, Some(local)) => local(&self.local_vhost),
            (None, None) => {
                return Err(format!(
                "{}: a URI without a host names the local node, which only an embedded shovel has",
                self.display()
            ))
            }
        };
        let mut tls = OwnedTLSConfig::default();
        if let Some(path) = &self.cacertfile {
            tls.cert_chain = Some(
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("failed to read cacertfile {path}: {e}"))?,
            );
        }
        if let Some((cert, key)) = &self.identity {
            let pem = tokio::fs::read(cert)
                .await
                .map_err(|e| format!("failed to read certfile {cert}: {e}"))?;
            let key = tokio::fs::read(key)
                .await
                .map_err(|e| format!("failed to read keyfile {key}: {e}"))?;
            tls.identity = Some(OwnedIdentity::PKCS8 { pem, key });
        }
        let props =
            ConnectionProperties::default().with_connection_name(format!("Shovel {name}").into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| format!("failed to get the AMQP client runtime: {e}"))?;
        let connect = Connection::connect_with_config(&uri, props, tls, runtime);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("failed to connect to {}: {e}", self.display())),
            Err(_) => Err(format!(
                "failed to connect to {}: no answer in {} s",
                self.display(),
                timeout.as_secs()
            )),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    url::form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("'{s}' is not a valid vhost"))
}

/// The URI with its password replaced, so status and logs do not show it.
pub fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_the_query() {
        let e = Endpoint::parse(
            "amqps://u:p@h:5671/v?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_peer&heartbeat=10",
            "/",
        )
        .expect("valid");
        assert_eq!(
            e.remote.as_deref(),
            Some("amqps://u:p@h:5671/v?heartbeat=10")
        );
        assert_eq!(e.cacertfile.as_deref(), Some("/ca.pem"));
        assert_eq!(e.display(), "amqps://u:***@h:5671/v?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_peer&heartbeat=10");
    }

    #[test]
    fn a_uri_without_host_is_the_local_node() {
        let e = Endpoint::parse("amqp://", "vh").expect("valid");
        assert!(e.is_local());
        assert_eq!(e.local_vhost, "vh");
        let e = Endpoint::parse("amqp:///%2f", "vh").expect("valid");
        assert_eq!(e.local_vhost, "/");
    }

    #[test]
    fn unusable_uris_are_refused() {
        assert!(Endpoint::parse("http://h", "/").is_err());
        assert!(Endpoint::parse("amqp://h?certfile=/c", "/").is_err());
        assert!(Endpoint::parse("amqps://h?verify=verify_none", "/").is_err());
        assert!(Endpoint::parse("amqp://h?fish=1", "/").is_err());
        assert!(Endpoint::parse("not a uri", "/").is_err());
    }
}
