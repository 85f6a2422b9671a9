//! AMQPS with rustls: a listener from a certificate, key and CA generated at run time
//! (rcgen); `verify_peer` with and without `fail_if_no_peer_cert`; TLS 1.2 and 1.3;
//! SASL EXTERNAL naming the user by the client certificate's subject or CN; lapin and pika
//! over `amqps://`.

use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_amqp::frame::{decode_frame, PROTOCOL_HEADER};
use warren_amqp::{connection, AMQPClass, Frame};
use warren_broker::config::{AuthMechanism, CertLoginFrom, TlsConfig, TlsVerify, TlsVersion};
use warren_tests::certs::{Issued, TestCa};
use warren_tests::{unique, within, TestBroker};

struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    server: Issued,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("Warren test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let server = ca.server(dir.path());
    Pki {
        dir,
        ca,
        ca_file,
        server,
    }
}

fn tls_config(p: &Pki, verify: TlsVerify, fail_if_no_peer_cert: bool) -> TlsConfig {
    TlsConfig {
        bind: None,
        port: 0,
        certfile: p.server.cert_file.clone(),
        keyfile: p.server.key_file.clone(),
        cacertfile: Some(p.ca_file.clone()),
        verify,
        fail_if_no_peer_cert,
        versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
    }
}

async fn tls_broker(tls: TlsConfig, tweak: impl FnOnce(&mut warren_broker::Config)) -> TestBroker {
    TestBroker::start_with(move |cfg| {
        cfg.tls = Some(tls);
        tweak(cfg);
    })
    .await
}

fn amqps_uri(broker: &TestBroker, user: &str, query: &str) -> String {
    let port = broker.tls_addr().expect("a TLS listener").port();
    format!("amqps://{user}@localhost:{port}/%2f{query}")
}

async fn lapin_tls(
    uri: &str,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> lapin::Result<Connection> {
    let config = OwnedTLSConfig {
        identity: identity.map(|i| OwnedIdentity::PKCS8 {
            pem: i.cert_pem.clone().into_bytes(),
            key: i.key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(ca_pem.to_string()),
    };
    within(
        10,
        "lapin amqps connect",
        Connection::connect_with_config(
            uri,
            ConnectionProperties::default(),
            config,
            lapin::runtime::default_runtime().expect("runtime"),
        ),
    )
    .await
}

async fn round_trip(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    let q = unique("tls-q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"over tls",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"over tls");
}

/// A raw TLS client: rustls with the given versions and optional client certificate.
async fn raw_tls(
    broker: &TestBroker,
    ca_file: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).expect("read CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(i) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(i.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client cert"),
                PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(broker.tls_addr().expect("TLS listener")).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector.connect(name, tcp).await?;
    // With TLS 1.3 a refused client certificate shows up at the first read; send the
    // protocol header so the caller sees it.
    tls.write_all(PROTOCOL_HEADER).await?;
    Ok(tls)
}

/// Reads `connection.start` from a raw TLS stream (after the protocol header was sent).
async fn read_start(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> std::io::Result<connection::Start> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Ok(Some(Frame::Method(0, m))) = decode_frame(&mut buf, 131072) {
            if let AMQPClass::Connection(connection::AMQPMethod::Start(s)) = *m {
                return Ok(s);
            }
        }
        let n = tls.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before connection.start",
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_and_gets_over_amqps() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyNone, false), |_| {}).await;
    if broker.is_external() {
        return;
    }
    let conn = lapin_tls(&amqps_uri(&broker, "guest:guest", ""), &p.ca.cert_pem, None)
        .await
        .expect("lapin connects over TLS");
    round_trip(&conn).await;
    let out = broker
        .admin_ok(&[
            "list_connections",
            "ssl",
            "ssl_protocol",
            "auth_mechanism",
            "user",
        ])
        .await;
    assert!(out.contains("true  TLSv1.3"), "{out}");
    assert!(out.contains("PLAIN"), "{out}");
    // The plain listener keeps working beside it.
    let plain = Connection::connect(broker.uri(), ConnectionProperties::default())
        .await
        .expect("plain AMQP");
    round_trip(&plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_both_offered_and_can_be_restricted() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyNone, false), |_| {}).await;
    if broker.is_external() {
        return;
    }
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = raw_tls(&broker, &p.ca_file, &[version], None)
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(name));
        let start = read_start(&mut tls).await.expect("connection.start");
        assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
    }
    let mut only13 = tls_config(&p, TlsVerify::VerifyNone, false);
    only13.versions = vec![TlsVersion::Tls13];
    let broker13 = tls_broker(only13, |_| {}).await;
    let refused = raw_tls(&broker13, &p.ca_file, &[&rustls::version::TLS12], None).await;
    assert!(refused.is_err(), "a TLS 1.2-only client is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_logs_in_as_the_client_certificate_subject() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyPeer, false), |cfg| {
        cfg.auth_mechanisms = vec![
            AuthMechanism::Plain,
            AuthMechanism::Amqplain,
            AuthMechanism::External,
        ];
    })
    .await;
    if broker.is_external() {
        return;
    }
    let alice = p.ca.client(p.dir.path(), "alice", "Warren Tests");
    // RabbitMQ's format: the subject's RDNs last to first.
    let subject = "CN=alice,O=Warren Tests";
    broker
        .admin_ok(&["add_user", subject, "unused-password"])
        .await;
    broker
        .admin_ok(&["set_permissions", "-p", "/", subject, ".*", ".*", ".*"])
        .await;
    // EXTERNAL is offered to a client with a certificate, and only to it.
    let mut with_cert = raw_tls(
        &broker,
        &p.ca_file,
        &[&rustls::version::TLS13],
        Some(&alice),
    )
    .await
    .expect("handshake with a certificate");
    let start = read_start(&mut with_cert).await.expect("start");
    assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN EXTERNAL");
    let mut without = raw_tls(&broker, &p.ca_file, &[&rustls::version::TLS13], None)
        .await
        .expect("handshake without a certificate");
    let start = read_start(&mut without).await.expect("start");
    assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");

    let conn = lapin_tls(
        &amqps_uri(&broker, "ignored", "?auth_mechanism=external"),
        &p.ca.cert_pem,
        Some(&alice),
    )
    .await
    .expect("EXTERNAL login");
    round_trip(&conn).await;
    let out = broker
        .admin_ok(&[
            "list_connections",
            "user",
            "auth_mechanism",
            "peer_cert_subject",
            "--formatter",
            "json",
        ])
        .await;
    assert!(
        out.contains(r#"{"user":"CN=alice,O=Warren Tests","auth_mechanism":"EXTERNAL","peer_cert_subject":"CN=alice,O=Warren Tests"}"#),
        "{out}"
    );
    // A certificate whose subject is not a user is refused like a wrong password.
    let bob = p.ca.client(p.dir.path(), "bob", "Warren Tests");
    let e = lapin_tls(
        &amqps_uri(&broker, "ignored", "?auth_mechanism=external"),
        &p.ca.cert_pem,
        Some(&bob),
    )
    .await
    .expect_err("unknown user");
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            assert_eq!(p.get_id(), 403);
            assert_eq!(
                p.get_message().to_string(),
                "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile."
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Password logins still work over the same listener, without a certificate.
    let plain = lapin_tls(&amqps_uri(&broker, "guest:guest", ""), &p.ca.cert_pem, None)
        .await
        .expect("PLAIN over TLS without a client certificate");
    round_trip(&plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_can_use_the_common_name() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyPeer, true), |cfg| {
        cfg.auth_mechanisms = vec![AuthMechanism::External];
        cfg.ssl_cert_login_from = CertLoginFrom::CommonName;
    })
    .await;
    if broker.is_external() {
        return;
    }
    let carol = p.ca.client(p.dir.path(), "carol", "Warren Tests");
    broker.admin_ok(&["add_user", "carol", "pw"]).await;
    broker
        .admin_ok(&["set_permissions", "-p", "/", "carol", ".*", ".*", ".*"])
        .await;
    let conn = lapin_tls(
        &amqps_uri(&broker, "ignored", "?auth_mechanism=external"),
        &p.ca.cert_pem,
        Some(&carol),
    )
    .await
    .expect("EXTERNAL with the CN");
    round_trip(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_if_no_peer_cert_refuses_clients_without_a_certificate() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyPeer, true), |_| {}).await;
    if broker.is_external() {
        return;
    }
    let refused = lapin_tls(&amqps_uri(&broker, "guest:guest", ""), &p.ca.cert_pem, None).await;
    assert!(refused.is_err(), "no certificate, no connection");
    // With a certificate from the CA the client gets in and logs in with a password.
    let dave = p.ca.client(p.dir.path(), "dave", "Warren Tests");
    let conn = lapin_tls(
        &amqps_uri(&broker, "guest:guest", ""),
        &p.ca.cert_pem,
        Some(&dave),
    )
    .await
    .expect("a client with a certificate connects");
    round_trip(&conn).await;
    // A certificate from another CA is refused even without fail_if_no_peer_cert.
    let other_ca = TestCa::new("Some other CA");
    let mallory = other_ca.client(p.dir.path(), "mallory", "Elsewhere");
    let lenient = tls_broker(tls_config(&p, TlsVerify::VerifyPeer, false), |_| {}).await;
    let refused = match raw_tls(
        &lenient,
        &p.ca_file,
        &[&rustls::version::TLS13],
        Some(&mallory),
    )
    .await
    {
        Err(_) => true,
        // With TLS 1.3 the refusal arrives as an alert at the first read.
        Ok(mut s) => {
            let mut b = [0u8; 16];
            matches!(within(5, "read", s.read(&mut b)).await, Ok(0) | Err(_))
        }
    };
    assert!(refused, "an unknown CA's certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_connects_over_amqps() {
    let p = pki();
    let broker = tls_broker(tls_config(&p, TlsVerify::VerifyNone, false), |_| {}).await;
    if broker.is_external() {
        return;
    }
    let python = warren_tests::pika::python();
    let port = broker.tls_addr().expect("TLS listener").port();
    let script = r#"
import pika, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
params = pika.ConnectionParameters(host="localhost", port=int(sys.argv[1]),
    credentials=pika.PlainCredentials("guest", "guest"),
    ssl_options=pika.SSLOptions(ctx, "localhost"))
conn = pika.BlockingConnection(params)
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.confirm_delivery()
ch.basic_publish("", q, b"pika over tls")
method, props, body = ch.basic_get(q, auto_ack=True)
assert body == b"pika over tls", body
print("ok")
conn.close()
"#;
    let ca = p.ca_file.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(&ca)
            .output()
            .expect("run python")
    })
    .await
    .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "pika failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
