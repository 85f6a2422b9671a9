//! The opening of a connection: protocol header, connection.start / start-ok (SASL PLAIN,
//! AMQPLAIN, or EXTERNAL with a TLS client certificate), tune / tune-ok, open / open-ok,
//! with RabbitMQ's server properties and its replies to every way this can go wrong.

use super::stream::{Reader, TlsSession};
use super::writer::Batch;
use crate::broker::BrokerShared;
use crate::config::{AuthMechanism, CertLoginFrom};
use crate::vhost::Vhost;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use warren_amqp::frame::{decode_frame, encode_method, Frame, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use warren_amqp::{connection, method, AMQPClass, AMQPValue, FieldTable, LongString, ReplyCode};

/// A completed handshake.
pub(super) struct Opened {
    pub reader: Reader,
    pub buf: BytesMut,
    pub user: Arc<str>,
    pub vhost: Arc<Vhost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
    pub mechanism: &'static str,
    pub client_properties: serde_json::Value,
}

/// What the handshake settled.
struct Negotiated {
    user: Arc<str>,
    pub vhost: Arc<Vhost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
    pub mechanism: &'static str,
    pub client_properties: serde_json::Value,
}

struct Handshake<'a> {
    shared: &'a BrokerShared,
    reader: Reader,
    buf: BytesMut,
    writer: &'a mpsc::UnboundedSender<Batch>,
}

enum Fail {
    /// Close the socket without a word.
    Silent,
    /// Send connection.close with this code and text, then close.
    Close(ReplyCode, String, u16, u16),
}

/// Runs the handshake; None when the connection was refused or dropped (already answered).
pub(super) async fn run(
    shared: &BrokerShared,
    reader: Reader,
    writer: &mpsc::UnboundedSender<Batch>,
    peer: SocketAddr,
    tls: Option<&TlsSession>,
) -> Option<Opened> {
    let mut h = Handshake {
        shared,
        reader,
        buf: BytesMut::with_capacity(8192),
        writer,
    };
    let timeout = Duration::from_secs(shared.config.handshake_timeout_secs);
    match tokio::time::timeout(timeout, h.steps(peer, tls)).await {
        Ok(Ok(n)) => Some(Opened {
            reader: h.reader,
            buf: h.buf,
            user: n.user,
            vhost: n.vhost,
            frame_max: n.frame_max,
            channel_max: n.channel_max,
            heartbeat: n.heartbeat,
            consumer_cancel_notify: n.consumer_cancel_notify,
            connection_blocked: n.connection_blocked,
            mechanism: n.mechanism,
            client_properties: n.client_properties,
        }),
        Ok(Err(Fail::Silent)) | Err(_) => None,
        Ok(Err(Fail::Close(code, text, c, m))) => {
            tracing::info!(%peer, %text, "connection refused");
            h.send(&method::connection_close(code.code(), &text, c, m));
            // Give the client a moment to read the close before the socket goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), h.read_method()).await;
            None
        }
    }
}

fn capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

fn server_properties(shared: &BrokerShared) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Warren"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("copyright".into(), s("Warren contributors"));
    p.insert(
        "information".into(),
        s("Licensed under the Apache License 2.0"),
    );
    p.insert("cluster_name".into(), s(&shared.config.node_name()));
    p
}

impl Handshake<'_> {
    fn send(&self, m: &AMQPClass) {
        let mut out = BytesMut::new();
        if encode_method(&mut out, 0, m).is_ok() {
            let _ = self.writer.send(Batch {
                parts: Vec::new(),
                data: out.freeze(),
                written: Vec::new(),
            });
        }
    }

    async fn read_more(&mut self) -> Result<(), Fail> {
        match self.reader.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(Fail::Silent),
            Ok(_) => Ok(()),
        }
    }

    /// Reads the next method on channel 0, skipping heartbeats.
    async fn read_method(&mut self) -> Result<AMQPClass, Fail> {
        loop {
            let frame = decode_frame(&mut self.buf, self.shared.config.frame_max);
            match frame.map(|f| f.map(Frame::into_generic)) {
                Ok(Some(Frame::Method(0, m))) => return Ok(*m),
                Ok(Some(Frame::Heartbeat(0))) => continue,
                Ok(Some(other)) => {
                    return Err(Fail::Close(
                        ReplyCode::CommandInvalid,
                        ReplyCode::CommandInvalid.text(format!(
                            "unexpected frame on channel {} during the handshake",
                            other.channel()
                        )),
                        0,
                        0,
                    ))
                }
                Ok(None) => self.read_more().await?,
                Err(e) => return Err(Fail::Close(e.code, e.text, e.class_id, e.method_id)),
            }
        }
    }

    async fn steps(
        &mut self,
        peer: SocketAddr,
        tls: Option<&TlsSession>,
    ) -> Result<Negotiated, Fail> {
        while self.buf.len() < 8 {
            self.read_more().await?;
            // A peer speaking something else (HTTP, AMQP 1.0) gets our header right away.
            if self.buf.len() < 8
                && !PROTOCOL_HEADER.starts_with(&self.buf[..])
                && !b"AMQP\x01\x01\x00\x09".starts_with(&self.buf[..])
            {
                break;
            }
        }
        // AMQP 0-9 clients (header `AMQP 1 1 0 9`) speak what 0-9-1 servers accept.
        if self.buf.len() < 8
            || (&self.buf[..8] != PROTOCOL_HEADER && &self.buf[..8] != b"AMQP\x01\x01\x00\x09")
        {
            let _ = self.writer.send(Batch {
                parts: Vec::new(),
                data: bytes::Bytes::from_static(PROTOCOL_HEADER),
                written: Vec::new(),
            });
            return Err(Fail::Silent);
        }
        let _ = self.buf.split_to(8);
        let cfg = &self.shared.config;
        // EXTERNAL is offered only to a TLS client that presented a verified certificate,
        // as RabbitMQ's rabbitmq_auth_mechanism_ssl does.
        let peer_cert = tls.and_then(|t| t.peer_cert.as_ref());
        let offered: Vec<AuthMechanism> = cfg
            .auth_mechanisms
            .iter()
            .copied()
            .filter(|m| *m != AuthMechanism::External || peer_cert.is_some())
            .collect();
        let mechanisms: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        self.send(&AMQPClass::Connection(connection::AMQPMethod::Start(
            connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(self.shared),
                mechanisms: LongString::from(mechanisms.join(" ").into_bytes()),
                locales: LongString::from(b"en_US".to_vec()),
            },
        )));
        let start_ok = match self.read_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::StartOk(s)) => s,
            other => return Err(unexpected(&other, "connection.start_ok")),
        };
        let failure_close = capability(&start_ok.client_properties, "authentication_failure_close");
        let consumer_cancel_notify =
            capability(&start_ok.client_properties, "consumer_cancel_notify");
        let connection_blocked = capability(&start_ok.client_properties, "connection.blocked");
        let mechanism = start_ok.mechanism.as_str().to_string();
        let Some(chosen) = offered.iter().copied().find(|m| m.name() == mechanism) else {
            // RabbitMQ drops the socket for a mechanism it did not offer.
            tracing::info!(%peer, %mechanism, "client asked for an unoffered mechanism");
            return Err(Fail::Silent);
        };
        let refused = |detail: String| {
            tracing::info!(%peer, "{detail}");
            if failure_close {
                Fail::Close(
                    ReplyCode::AccessRefused,
                    ReplyCode::AccessRefused.text(format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    )),
                    0,
                    0,
                )
            } else {
                Fail::Silent
            }
        };
        let user = if chosen == AuthMechanism::External {
            // The certificate names the user; the response is ignored, and the user only
            // has to exist (no password), as in RabbitMQ.
            let Some(cert) = peer_cert else {
                return Err(refused("EXTERNAL without a client certificate".into()));
            };
            let user = match cfg.ssl_cert_login_from {
                CertLoginFrom::DistinguishedName => Some(cert.subject.clone()),
                CertLoginFrom::CommonName => cert.common_name.clone(),
            };
            let Some(user) = user else {
                return Err(refused("the client certificate has no common name".into()));
            };
            if !self.shared.with_meta(|m| m.users.contains_key(&user)) {
                return Err(refused(format!("user '{user}' - invalid credentials")));
            }
            user
        } else {
            let Some((user, pass)) =
                crate::auth::parse_response(&mechanism, start_ok.response.as_bytes())
            else {
                return Err(refused(format!("malformed {mechanism} response")));
            };
            let known = self.shared.with_meta(|m| {
                m.users.get(&user).map(|u| {
                    crate::auth::verify_password_with(u.hashing_algorithm, &u.password_hash, &pass)
                })
            });
            if known != Some(true) {
                return Err(refused(format!("user '{user}' - invalid credentials")));
            }
            user
        };
        if cfg.loopback_users.contains(&user) && !cfg.is_loopback(peer.ip()) {
            return Err(refused(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
        self.send(&AMQPClass::Connection(connection::AMQPMethod::Tune(
            connection::Tune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            },
        )));
        let tune_ok = match self.read_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(t)) => t,
            other => return Err(unexpected(&other, "connection.tune_ok")),
        };
        let frame_max = tune_ok.frame_max;
        if tune_ok.frame_max < FRAME_MIN_SIZE
            || tune_ok.frame_max > cfg.frame_max
            || tune_ok.channel_max == 0
            || tune_ok.channel_max > cfg.channel_max
        {
            // RabbitMQ drops the socket without a close frame for tune-ok values out of range.
            tracing::info!(%peer, frame_max, channel_max = tune_ok.channel_max, "tune-ok out of range");
            return Err(Fail::Silent);
        }
        let channel_max = tune_ok.channel_max;
        let open = match self.read_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Open(o)) => o,
            other => return Err(unexpected(&other, "connection.open")),
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.shared.vhost(vhost_name) else {
            return Err(Fail::Close(
                ReplyCode::NotAllowed,
                ReplyCode::NotAllowed.text(format!("vhost {vhost_name} not found")),
                10,
                40,
            ));
        };
        let allowed = self.shared.with_meta(|m| {
            m.permissions
                .contains_key(&(user.clone(), vhost_name.to_string()))
        });
        if !allowed {
            return Err(Fail::Close(
                ReplyCode::NotAllowed,
                ReplyCode::NotAllowed.text(format!(
                    "access to vhost '{vhost_name}' refused for user '{user}'"
                )),
                10,
                40,
            ));
        }
        // RabbitMQ's connection limits: the vhost's, then the user's.
        let (vhost_max, user_max) = self.shared.with_meta(|m| {
            (
                m.vhosts
                    .get(vhost_name)
                    .and_then(|v| v.limit("max-connections")),
                m.users.get(&user).and_then(|u| u.limit("max-connections")),
            )
        });
        let over = |max: Option<u64>, pred: &dyn Fn(&super::registry::ConnectionEntry) -> bool| {
            max.filter(|&max| self.shared.connections.count_where(pred) as u64 >= max)
        };
        let refusal = if let Some(max) = over(vhost_max, &|c| &*c.vhost == vhost_name) {
            Some(format!(
                "access to vhost '{vhost_name}' refused for user '{user}': connection limit ({max}) is reached"
            ))
        } else {
            over(user_max, &|c| *c.user == *user).map(|max| {
                format!(
                    "connection refused for user '{user}': user connection limit ({max}) is reached"
                )
            })
        };
        if let Some(text) = refusal {
            return Err(Fail::Close(
                ReplyCode::NotAllowed,
                ReplyCode::NotAllowed.text(text),
                10,
                40,
            ));
        }
        self.send(&AMQPClass::Connection(connection::AMQPMethod::OpenOk(
            connection::OpenOk {},
        )));
        Ok(Negotiated {
            user: Arc::from(user.as_str()),
            vhost,
            frame_max,
            channel_max,
            heartbeat: tune_ok.heartbeat,
            consumer_cancel_notify,
            connection_blocked,
            mechanism: chosen.name(),
            client_properties: client_summary(&start_ok.client_properties),
        })
    }
}

/// The client properties `list_connections` shows, as JSON (strings only; capabilities
/// left out).
fn client_summary(props: &FieldTable) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in props.inner() {
        let text = match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_string(),
            _ => continue,
        };
        out.insert(k.as_str().to_string(), serde_json::Value::String(text));
    }
    serde_json::Value::Object(out)
}

fn unexpected(m: &AMQPClass, expected: &str) -> Fail {
    let (c, id) = method::ids(m);
    Fail::Close(
        ReplyCode::CommandInvalid,
        ReplyCode::CommandInvalid.text(format!(
            "expected '{expected}', got '{}'",
            method::name(c, id)
        )),
        c,
        id,
    )
}
