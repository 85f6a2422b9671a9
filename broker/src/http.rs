//! The HTTP port (AMQP port + 10000 by default): `/metrics` in Prometheus' text format, and
//! the paths of RabbitMQ's management API that operators, monitoring and `rabbitmqadmin`
//! use — overview, health checks, listings, definitions, and the changes to users, vhosts,
//! permissions, policies, parameters, queues, exchanges and bindings.
//!
//! Every answer is built from the same handlers as warrenctl's (`dist::ctl`), or from a
//! definitions import for declarations, so the HTTP API and the CLI cannot disagree.
//! Requests authenticate with HTTP basic auth as users with a management tag, as
//! RabbitMQ's management plugin requires; `loopback_users` applies here too. `/metrics`
//! needs no login, as RabbitMQ's Prometheus plugin.

// Handlers return their error as the HTTP response itself; a large Err is the point.
#![allow(clippy::result_large_err)]

use crate::broker::BrokerShared;
use crate::dist::ctl::{self, CtlOp, Reply};
use crate::dist::protocol::RemoteError;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use base64::Engine;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Clone)]
struct App {
    shared: Arc<BrokerShared>,
    /// This node's gauges, set at each scrape (a node-local recorder: several nodes in one
    /// process, as in tests, each report their own).
    node: Arc<PrometheusRecorder>,
    node_handle: PrometheusHandle,
}

/// The process-wide recorder behind the `metrics` facade (shovels and other components
/// record through it); installed by the first node of the process.
pub(crate) fn global_metrics() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// Serves the HTTP port until the node shuts down.
pub async fn run(shared: Arc<BrokerShared>, listener: TcpListener) {
    // Series not set at the latest scrape (a deleted queue) are dropped from the output.
    let recorder = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(1)))
        .build_recorder();
    let node_handle = recorder.handle();
    let _ = global_metrics();
    let app = App {
        shared: shared.clone(),
        node: Arc::new(recorder),
        node_handle,
    };
    let router = Router::new()
        .route("/metrics", get(prometheus))
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/health/checks/alarms", get(health_alarms))
        .route("/api/health/checks/local-alarms", get(health_alarms))
        .route("/api/health/checks/virtual-hosts", get(health_vhosts))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(health_port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(health_protocol_listener),
        )
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/{user}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            put(put_permissions).delete(delete_permissions),
        )
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(put_queue).delete(delete_queue),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge_queue))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings_between).post(post_binding),
        )
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(delete_connection),
        )
        .route("/api/channels", get(channels))
        .route("/api/consumers", get(consumers))
        .route("/api/policies", get(policies))
        .route("/api/policies/{vhost}", get(policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            put(put_policy).delete(delete_policy),
        )
        .route("/api/parameters", get(parameters))
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            put(put_parameter).delete(delete_parameter),
        )
        .route("/api/definitions", get(export).post(import))
        .fallback(not_found)
        .with_state(app);
    let done = shared.shutdown.clone().cancelled_owned();
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(done)
    .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "HTTP listener stopped");
    }
}

// ---- answers ----

fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "reason": reason.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    not_found_now()
}

fn remote(e: RemoteError) -> Response {
    let missing = e.message.contains("does not exist") || e.message.contains("not found");
    match e.code {
        67 => error(StatusCode::NOT_FOUND, "Object Not Found", e.message),
        69 if missing => error(StatusCode::NOT_FOUND, "Object Not Found", e.message),
        69 => error(StatusCode::BAD_REQUEST, "bad_request", e.message),
        64 | 65 => error(StatusCode::BAD_REQUEST, "bad_request", e.message),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.message,
        ),
    }
}

/// A table as RabbitMQ's API shows it: one object per row.
fn objects(reply: Reply) -> Vec<Value> {
    match reply {
        Reply::Table(t) => t
            .rows
            .into_iter()
            .map(|row| {
                Value::Object(
                    t.columns
                        .iter()
                        .cloned()
                        .zip(row)
                        .collect::<serde_json::Map<_, _>>(),
                )
            })
            .collect(),
        Reply::Document(Value::Array(a)) => a,
        Reply::Document(v) => vec![v],
        Reply::Done | Reply::Message(_) => Vec::new(),
    }
}

async fn run_ctl(app: &App, op: CtlOp) -> Result<Reply, Response> {
    ctl::handle(&app.shared, op).await.map_err(remote)
}

/// Runs a change and answers 204 No Content, or the error.
async fn change(app: &App, op: CtlOp) -> Response {
    match run_ctl(app, op).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

/// Runs a listing, in every vhost the user may see when `vhost` is None.
async fn list(
    app: &App,
    login: &Login,
    vhost: Option<&str>,
    op: impl Fn(String) -> CtlOp,
) -> Response {
    let names: Vec<String> = match vhost {
        Some(v) => {
            if !login.sees(&app.shared, v) {
                return error(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized");
            }
            vec![v.to_string()]
        }
        None => app.shared.with_meta(|m| m.vhosts.keys().cloned().collect()),
    };
    let mut all = Vec::new();
    for v in names.into_iter().filter(|v| login.sees(&app.shared, v)) {
        match run_ctl(app, op(v)).await {
            Ok(r) => all.extend(objects(r)),
            Err(r) => return r,
        }
    }
    Json(all).into_response()
}

/// The one object of a listing whose `key` is `value`, or 404.
fn one(rows: Vec<Value>, key: &str, value: &str) -> Response {
    match rows.into_iter().find(|r| r[key] == value) {
        Some(r) => Json(r).into_response(),
        None => not_found_now(),
    }
}

fn not_found_now() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

fn all() -> Vec<String> {
    vec!["*".to_string()]
}

// ---- authentication ----

/// What a user may do through the API, from its tags (RabbitMQ's management tags).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// `management`: its own vhosts.
    Management,
    /// `policymaker`: also policies and parameters in its vhosts.
    PolicyMaker,
    /// `monitoring`: also every vhost, connection and channel, read-only.
    Monitoring,
    /// `administrator`: everything.
    Administrator,
}

struct Login {
    name: String,
    tags: Vec<String>,
    level: Level,
}

impl Login {
    /// True when the user may look into `vhost`.
    fn sees(&self, shared: &BrokerShared, vhost: &str) -> bool {
        self.level >= Level::Monitoring
            || shared.with_meta(|m| {
                m.permissions
                    .contains_key(&(self.name.clone(), vhost.to_string()))
            })
    }

    /// Rejects the request unless the user's level is at least `need`.
    fn require(&self, need: Level) -> Result<(), Response> {
        if self.level >= need {
            Ok(())
        } else {
            Err(error(
                StatusCode::UNAUTHORIZED,
                "not_authorized",
                "Not administrator user",
            ))
        }
    }
}

fn unauthorized(reason: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "not_authorized", reason);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    r
}

fn login(app: &App, headers: &HeaderMap, peer: SocketAddr) -> Result<Login, Response> {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some(credentials) = credentials else {
        return Err(unauthorized("Not_Authorized"));
    };
    let Some((user, pass)) = credentials.split_once(':') else {
        return Err(unauthorized("Not_Authorized"));
    };
    let tags = app.shared.with_meta(|m| {
        m.users.get(user).and_then(|u| {
            crate::auth::verify_password_with(u.hashing_algorithm, &u.password_hash, pass)
                .then(|| u.tags.clone())
        })
    });
    let Some(tags) = tags else {
        return Err(unauthorized("Login failed"));
    };
    let cfg = &app.shared.config;
    if cfg.loopback_users.iter().any(|u| u == user) && !cfg.is_loopback(peer.ip()) {
        return Err(unauthorized(&format!(
            "User can only log in via localhost ({user})"
        )));
    }
    let has = |t: &str| tags.iter().any(|x| x == t);
    let level = if has("administrator") {
        Level::Administrator
    } else if has("monitoring") {
        Level::Monitoring
    } else if has("policymaker") {
        Level::PolicyMaker
    } else if has("management") {
        Level::Management
    } else {
        return Err(unauthorized("Not management user"));
    };
    Ok(Login {
        name: user.to_string(),
        tags,
        level,
    })
}

/// Logs the request in, then runs `f` with the login.
macro_rules! authed {
    ($app:expr, $headers:expr, $peer:expr) => {
        match login(&$app, &$headers, $peer) {
            Ok(l) => l,
            Err(r) => return r,
        }
    };
    ($app:expr, $headers:expr, $peer:expr, $need:expr) => {{
        let l = authed!($app, $headers, $peer);
        if let Err(r) = l.require($need) {
            return r;
        }
        l
    }};
}

type Peer = ConnectInfo<SocketAddr>;

// ---- metrics ----

async fn prometheus(State(app): State<App>) -> Response {
    let shared = &app.shared;
    let t = shared.connections.totals();
    let conns = shared.connections.list();
    let channels = shared.connections.channels_where(|_| true);
    let queues = queue_infos(shared).await;
    let (vhosts, users, exchanges) = shared.with_meta(|m| {
        (
            m.vhosts.len(),
            m.users.len(),
            m.vhosts.values().map(|v| v.exchanges.len()).sum::<usize>(),
        )
    });
    let alarms = *shared.alarms.borrow();
    let rss = crate::alarm::resident_memory().unwrap_or(0);
    let free = fs2::available_space(&shared.config.data_dir).unwrap_or(0);
    let node = shared.config.node_name();
    metrics::with_local_recorder(&*app.node, || {
        let n = || node.clone();
        metrics::gauge!("warren_build_info", "node" => n(), "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
        metrics::gauge!("warren_uptime_seconds", "node" => n())
            .set(shared.started_at.elapsed().as_secs_f64());
        metrics::gauge!("warren_connections", "node" => n()).set(conns.len() as f64);
        metrics::counter!("warren_connections_opened_total", "node" => n())
            .absolute(shared.connections.opened());
        metrics::gauge!("warren_channels", "node" => n()).set(channels as f64);
        metrics::gauge!("warren_vhosts", "node" => n()).set(vhosts as f64);
        metrics::gauge!("warren_users", "node" => n()).set(users as f64);
        metrics::gauge!("warren_exchanges", "node" => n()).set(exchanges as f64);
        metrics::gauge!("warren_queues", "node" => n()).set(queues.len() as f64);
        metrics::counter!("warren_messages_published_total", "node" => n()).absolute(t.published);
        metrics::counter!("warren_messages_delivered_total", "node" => n()).absolute(t.delivered);
        metrics::counter!("warren_messages_redelivered_total", "node" => n())
            .absolute(t.redelivered);
        metrics::counter!("warren_received_bytes_total", "node" => n()).absolute(t.recv_oct);
        metrics::counter!("warren_sent_bytes_total", "node" => n()).absolute(t.send_oct);
        metrics::gauge!("warren_process_resident_memory_bytes", "node" => n()).set(rss as f64);
        metrics::gauge!("warren_disk_free_bytes", "node" => n()).set(free as f64);
        metrics::gauge!("warren_alarm", "node" => n(), "resource" => "memory")
            .set(f64::from(u8::from(alarms.memory)));
        metrics::gauge!("warren_alarm", "node" => n(), "resource" => "disk")
            .set(f64::from(u8::from(alarms.disk)));
        let (mut ready, mut unacked, mut consumers) = (0u64, 0u64, 0u64);
        for (vhost, name, i) in &queues {
            ready += i.messages_ready;
            unacked += i.messages_unacknowledged;
            consumers += u64::from(i.consumers);
            let l = [("vhost", vhost.clone()), ("queue", name.clone())];
            metrics::gauge!("warren_queue_messages_ready", &l).set(i.messages_ready as f64);
            metrics::gauge!("warren_queue_messages_unacked", &l)
                .set(i.messages_unacknowledged as f64);
            metrics::gauge!("warren_queue_messages_ready_bytes", &l)
                .set(i.message_bytes_ready as f64);
            metrics::gauge!("warren_queue_consumers", &l).set(f64::from(i.consumers));
        }
        metrics::gauge!("warren_messages_ready", "node" => n()).set(ready as f64);
        metrics::gauge!("warren_messages_unacked", "node" => n()).set(unacked as f64);
        metrics::gauge!("warren_consumers", "node" => n()).set(consumers as f64);
    });
    let mut text = app.node_handle.render();
    if let Some(global) = global_metrics() {
        global.run_upkeep();
        text.push_str(&global.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Every queue of the node with its counts (queues whose actor is gone are left out).
async fn queue_infos(shared: &BrokerShared) -> Vec<(String, String, crate::queue::QueueInfo)> {
    let names: Vec<(String, String)> = shared.with_meta(|m| {
        m.vhosts
            .iter()
            .flat_map(|(v, vh)| vh.queues.keys().map(move |q| (v.clone(), q.clone())))
            .collect()
    });
    let mut out = Vec::with_capacity(names.len());
    for (v, q) in names {
        let Some(h) = shared.vhost(&v).and_then(|vh| vh.queue(&q)) else {
            continue;
        };
        if let Ok(i) = h.info().await {
            out.push((v, q, i));
        }
    }
    out
}

// ---- overview, nodes, health ----

async fn overview(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer);
    let shared = &app.shared;
    let t = shared.connections.totals();
    let conns = shared.connections.list();
    let channels = shared.connections.channels_where(|_| true);
    let queues = queue_infos(shared).await;
    let exchanges =
        shared.with_meta(|m| m.vhosts.values().map(|v| v.exchanges.len()).sum::<usize>());
    let ready: u64 = queues.iter().map(|q| q.2.messages_ready).sum();
    let unacked: u64 = queues.iter().map(|q| q.2.messages_unacknowledged).sum();
    let consumers: u64 = queues.iter().map(|q| u64::from(q.2.consumers)).sum();
    let listeners: Vec<Value> = shared
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, a)| {
            json!({"node": shared.config.node_name(), "protocol": p,
                   "ip_address": a.ip().to_string(), "port": a.port()})
        })
        .collect();
    let cluster_name = shared
        .with_meta(|m| m.global_parameters.get("cluster_name").cloned())
        .unwrap_or_else(|| Value::String(shared.config.node_name()));
    Json(json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": shared.config.node_name(),
        "cluster_name": cluster_name,
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues.len(),
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": {
            "publish": t.published,
            "deliver_get": t.delivered,
            "redeliver": t.redelivered,
        },
        "listeners": listeners,
    }))
    .into_response()
}

async fn whoami(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    Json(json!({"name": login.name, "tags": login.tags})).into_response()
}

async fn nodes(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer, Level::Monitoring);
    match run_ctl(&app, CtlOp::Status).await {
        Ok(Reply::Document(mut status)) => {
            let name = status["node"].clone();
            status["name"] = name;
            status["type"] = json!("disc");
            Json(vec![status]).into_response()
        }
        Ok(_) => Json(Vec::<Value>::new()).into_response(),
        Err(r) => r,
    }
}

async fn health_alarms(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer);
    let alarms = *app.shared.alarms.borrow();
    if !alarms.any() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let node = app.shared.config.node_name();
    let mut raised = Vec::new();
    if alarms.memory {
        raised.push(json!({"node": node, "resource": "memory"}));
    }
    if alarms.disk {
        raised.push(json!({"node": node, "resource": "disk"}));
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed",
                    "reason": "There are alarms in effect in the cluster",
                    "alarms": raised})),
    )
        .into_response()
}

async fn health_vhosts(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer);
    let down: Vec<String> = app.shared.with_meta(|m| {
        m.vhosts
            .keys()
            .filter(|v| app.shared.vhost(v).is_none())
            .cloned()
            .collect()
    });
    if down.is_empty() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed",
                        "reason": format!("Some virtual hosts are down: {}", down.join(", ")),
                        "virtual-hosts": down})),
        )
            .into_response()
    }
}

fn listener_check(app: &App, matches: impl Fn(&str, SocketAddr) -> bool, what: Value) -> Response {
    let listeners = app
        .shared
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if listeners.iter().any(|(p, a)| matches(p, *a)) {
        let mut ok = json!({"status": "ok"});
        if let (Some(o), Some(w)) = (ok.as_object_mut(), what.as_object()) {
            o.extend(w.clone());
        }
        return Json(ok).into_response();
    }
    let present: Vec<Value> = listeners
        .iter()
        .map(|(p, a)| json!({"protocol": p, "port": a.port()}))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": "No active listener", "missing": what, "listeners": present})),
    )
        .into_response()
}

async fn health_port_listener(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(port): Path<u16>,
) -> Response {
    let _login = authed!(app, h, peer);
    listener_check(&app, |_, a| a.port() == port, json!({"port": port}))
}

async fn health_protocol_listener(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(protocol): Path<String>,
) -> Response {
    let _login = authed!(app, h, peer);
    // RabbitMQ's names: amqp (also amqp091), amqp/ssl (also amqps), clustering, http.
    let want = match protocol.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
        "amqps" => "amqp/ssl",
        "https" => "https",
        other => other,
    }
    .to_string();
    listener_check(&app, |p, _| p == want, json!({"protocol": protocol}))
}

// ---- vhosts, users, permissions ----

async fn vhosts(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    match run_ctl(&app, CtlOp::ListVhosts { columns: all() }).await {
        Ok(r) => Json(
            objects(r)
                .into_iter()
                .filter(|v| {
                    v["name"]
                        .as_str()
                        .is_some_and(|n| login.sees(&app.shared, n))
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}

async fn vhost(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let login = authed!(app, h, peer);
    if !login.sees(&app.shared, &name) {
        return not_found_now();
    }
    match run_ctl(&app, CtlOp::ListVhosts { columns: all() }).await {
        Ok(r) => one(objects(r), "name", &name),
        Err(r) => r,
    }
}

fn body(text: &str) -> Result<Value, Response> {
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(text).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("JSON decoding error: {e}"),
        )
    })
}

fn string_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// RabbitMQ's `tags` field: a list, or one comma-separated string.
fn tags_field(v: &Value) -> Option<Vec<String>> {
    match v.get("tags")? {
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        Value::String(s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

async fn put_vhost(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let existed = app.shared.vhost(&name).is_some();
    let op = CtlOp::AddVhost {
        name,
        description: string_field(&b, "description"),
        tags: tags_field(&b),
        default_queue_type: string_field(&b, "default_queue_type"),
    };
    match run_ctl(&app, op).await {
        Ok(_) if existed => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(r) => r,
    }
}

async fn delete_vhost(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    change(&app, CtlOp::DeleteVhost { name }).await
}

async fn users(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    match run_ctl(&app, CtlOp::ListUsers).await {
        Ok(r) => Json(with_user_hashes(&app, objects(r))).into_response(),
        Err(r) => r,
    }
}

/// RabbitMQ's API lists users with their hashes and algorithm.
fn with_user_hashes(app: &App, rows: Vec<Value>) -> Vec<Value> {
    app.shared.with_meta(|m| {
        rows.into_iter()
            .map(|mut r| {
                let name = r["user"].as_str().unwrap_or_default().to_string();
                if let Some(u) = m.users.get(&name) {
                    r["name"] = json!(name);
                    r["password_hash"] = json!(u.password_hash);
                    r["hashing_algorithm"] = json!(u.hashing_algorithm);
                    r["limits"] = u.limits.clone();
                }
                if let Some(o) = r.as_object_mut() {
                    o.remove("user");
                }
                r
            })
            .collect()
    })
}

async fn user(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    match run_ctl(&app, CtlOp::ListUsers).await {
        Ok(r) => one(with_user_hashes(&app, objects(r)), "name", &name),
        Err(r) => r,
    }
}

async fn put_user(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let existed = app.shared.with_meta(|m| m.users.contains_key(&name));
    let tags = tags_field(&b).unwrap_or_default();
    if let Some(hash) = string_field(&b, "password_hash") {
        // A hash as RabbitMQ exports it: through the definitions import, which knows them.
        let algorithm = b
            .get("hashing_algorithm")
            .cloned()
            .unwrap_or_else(|| json!("rabbit_password_hashing_sha256"));
        let defs = json!({"users": [{"name": name, "password_hash": hash,
                                     "hashing_algorithm": algorithm, "tags": tags}]});
        return match run_ctl(&app, CtlOp::ImportDefinitions { definitions: defs }).await {
            Ok(_) if existed => StatusCode::NO_CONTENT.into_response(),
            Ok(_) => StatusCode::CREATED.into_response(),
            Err(r) => r,
        };
    }
    let Some(password) = string_field(&b, "password") else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "password or password_hash must be set",
        );
    };
    let first = if existed {
        CtlOp::ChangePassword {
            name: name.clone(),
            password,
        }
    } else {
        CtlOp::AddUser {
            name: name.clone(),
            password,
        }
    };
    if let Err(r) = run_ctl(&app, first).await {
        return r;
    }
    match run_ctl(&app, CtlOp::SetUserTags { name, tags }).await {
        Ok(_) if existed => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(r) => r,
    }
}

async fn delete_user(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    change(&app, CtlOp::DeleteUser { name }).await
}

async fn permissions(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer, Level::Administrator);
    list(&app, &login, None, |vhost| CtlOp::ListPermissions { vhost }).await
}

async fn put_permissions(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let get = |k: &str| string_field(&b, k).unwrap_or_default();
    let op = CtlOp::SetPermissions {
        vhost,
        user,
        configure: get("configure"),
        write: get("write"),
        read: get("read"),
    };
    change(&app, op).await
}

async fn delete_permissions(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    change(&app, CtlOp::ClearPermissions { vhost, user }).await
}

// ---- queues, exchanges, bindings ----

async fn queues(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, None, |vhost| CtlOp::ListQueues {
        vhost,
        columns: all(),
    })
    .await
}

async fn queues_in(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, Some(&vhost), |vhost| CtlOp::ListQueues {
        vhost,
        columns: all(),
    })
    .await
}

async fn queue(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let login = authed!(app, h, peer);
    if !login.sees(&app.shared, &vhost) {
        return not_found_now();
    }
    match run_ctl(
        &app,
        CtlOp::ListQueues {
            vhost,
            columns: all(),
        },
    )
    .await
    {
        Ok(r) => one(objects(r), "name", &name),
        Err(r) => r,
    }
}

/// Declares through a definitions import: the same validation, equivalence checks and
/// texts as an imported file.
async fn declare(app: &App, key: &str, item: Value, existed: bool) -> Response {
    let defs = json!({ key: [item] });
    match run_ctl(app, CtlOp::ImportDefinitions { definitions: defs }).await {
        Ok(_) if existed => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e) => e,
    }
}

fn flag(b: &Value, key: &str, default: bool) -> bool {
    b.get(key).and_then(Value::as_bool).unwrap_or(default)
}

async fn put_queue(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let existed = app
        .shared
        .vhost(&vhost)
        .is_some_and(|v| v.queue(&name).is_some());
    let item = json!({
        "name": name, "vhost": vhost,
        "durable": flag(&b, "durable", true),
        "auto_delete": flag(&b, "auto_delete", false),
        "arguments": b.get("arguments").cloned().unwrap_or_else(|| json!({})),
    });
    declare(&app, "queues", item, existed).await
}

async fn delete_queue(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let op = CtlOp::DeleteQueue {
        vhost,
        name,
        if_empty: q.get("if-empty").is_some_and(|v| v == "true"),
        if_unused: q.get("if-unused").is_some_and(|v| v == "true"),
    };
    change(&app, op).await
}

async fn purge_queue(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    change(&app, CtlOp::PurgeQueue { vhost, name }).await
}

async fn exchanges(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, None, |vhost| CtlOp::ListExchanges {
        vhost,
        columns: all(),
    })
    .await
}

async fn exchanges_in(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, Some(&vhost), |vhost| CtlOp::ListExchanges {
        vhost,
        columns: all(),
    })
    .await
}

async fn exchange(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let login = authed!(app, h, peer);
    if !login.sees(&app.shared, &vhost) {
        return not_found_now();
    }
    // The default exchange is `amq.default` in the API's paths.
    let name = if name == "amq.default" {
        String::new()
    } else {
        name
    };
    match run_ctl(
        &app,
        CtlOp::ListExchanges {
            vhost,
            columns: all(),
        },
    )
    .await
    {
        Ok(r) => one(objects(r), "name", &name),
        Err(r) => r,
    }
}

async fn put_exchange(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(kind) = string_field(&b, "type") else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "type must be set");
    };
    let existed = app.shared.with_meta(|m| {
        m.vhosts
            .get(&vhost)
            .is_some_and(|v| v.exchanges.contains_key(&name))
    });
    let item = json!({
        "name": name, "vhost": vhost, "type": kind,
        "durable": flag(&b, "durable", true),
        "auto_delete": flag(&b, "auto_delete", false),
        "internal": flag(&b, "internal", false),
        "arguments": b.get("arguments").cloned().unwrap_or_else(|| json!({})),
    });
    declare(&app, "exchanges", item, existed).await
}

async fn delete_exchange(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let if_unused = q.get("if-unused").is_some_and(|v| v == "true");
    let cmd = crate::meta::MetaCommand::DeleteExchange {
        vhost,
        name,
        if_unused,
    };
    match app.shared.execute(cmd).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e.text),
    }
}

async fn bindings(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, None, |vhost| CtlOp::ListBindings {
        vhost,
        columns: all(),
    })
    .await
}

async fn bindings_in(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, Some(&vhost), |vhost| CtlOp::ListBindings {
        vhost,
        columns: all(),
    })
    .await
}

/// `q` or `e` in the API's binding paths.
fn destination_type(kind: &str) -> Option<&'static str> {
    match kind {
        "q" => Some("queue"),
        "e" => Some("exchange"),
        _ => None,
    }
}

async fn bindings_between(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> Response {
    let login = authed!(app, h, peer);
    let Some(kind) = destination_type(&kind) else {
        return not_found_now();
    };
    let rows = match run_ctl(
        &app,
        CtlOp::ListBindings {
            vhost: vhost.clone(),
            columns: all(),
        },
    )
    .await
    {
        Ok(r) => objects(r),
        Err(r) => return r,
    };
    if !login.sees(&app.shared, &vhost) {
        return not_found_now();
    }
    Json(
        rows.into_iter()
            .filter(|r| {
                r["source_name"] == source.as_str()
                    && r["destination_name"] == destination.as_str()
                    && r["destination_kind"] == kind
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn post_binding(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let Some(kind) = destination_type(&kind) else {
        return not_found_now();
    };
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let item = json!({
        "source": source, "vhost": vhost, "destination": destination,
        "destination_type": kind,
        "routing_key": string_field(&b, "routing_key").unwrap_or_default(),
        "arguments": b.get("arguments").cloned().unwrap_or_else(|| json!({})),
    });
    declare(&app, "bindings", item, false).await
}

// ---- connections, channels, consumers ----

async fn connections(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    match run_ctl(&app, CtlOp::ListConnections { columns: all() }).await {
        Ok(r) => Json(
            objects(r)
                .into_iter()
                .filter(|c| login.level >= Level::Monitoring || c["user"] == login.name.as_str())
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}

async fn connection(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let login = authed!(app, h, peer);
    match run_ctl(&app, CtlOp::ListConnections { columns: all() }).await {
        Ok(r) => one(
            objects(r)
                .into_iter()
                .filter(|c| login.level >= Level::Monitoring || c["user"] == login.name.as_str())
                .collect(),
            "name",
            &name,
        ),
        Err(r) => r,
    }
}

async fn delete_connection(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let reason = h
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    change(&app, CtlOp::CloseConnection { name, reason }).await
}

async fn channels(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer, Level::Monitoring);
    match run_ctl(&app, CtlOp::ListChannels { columns: all() }).await {
        Ok(r) => Json(objects(r)).into_response(),
        Err(r) => r,
    }
}

async fn consumers(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer);
    list(&app, &login, None, |vhost| CtlOp::ListConsumers {
        vhost,
        columns: all(),
    })
    .await
}

// ---- policies, parameters, definitions ----

async fn policies(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer, Level::PolicyMaker);
    list(&app, &login, None, |vhost| CtlOp::ListPolicies {
        vhost,
        operator: false,
    })
    .await
}

async fn policies_in(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    let login = authed!(app, h, peer, Level::PolicyMaker);
    list(&app, &login, Some(&vhost), |vhost| CtlOp::ListPolicies {
        vhost,
        operator: false,
    })
    .await
}

async fn put_policy(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::PolicyMaker);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let op = CtlOp::SetPolicy {
        vhost,
        name,
        pattern: string_field(&b, "pattern").unwrap_or_default(),
        definition: b
            .get("definition")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".into()),
        priority: b.get("priority").and_then(Value::as_i64).unwrap_or(0),
        apply_to: string_field(&b, "apply-to").unwrap_or_else(|| "all".into()),
        operator: false,
    };
    change(&app, op).await
}

async fn delete_policy(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let _login = authed!(app, h, peer, Level::PolicyMaker);
    change(
        &app,
        CtlOp::ClearPolicy {
            vhost,
            name,
            operator: false,
        },
    )
    .await
}

async fn parameters(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let login = authed!(app, h, peer, Level::PolicyMaker);
    list(&app, &login, None, |vhost| CtlOp::ListParameters { vhost }).await
}

async fn put_parameter(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((component, vhost, name)): Path<(String, String, String)>,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::PolicyMaker);
    let b = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(value) = b.get("value") else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "value must be set");
    };
    let op = CtlOp::SetParameter {
        vhost,
        component,
        name,
        value: value.to_string(),
    };
    change(&app, op).await
}

async fn delete_parameter(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Response {
    let _login = authed!(app, h, peer, Level::PolicyMaker);
    change(
        &app,
        CtlOp::ClearParameter {
            vhost,
            component,
            name,
        },
    )
    .await
}

async fn export(State(app): State<App>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    match run_ctl(&app, CtlOp::ExportDefinitions).await {
        Ok(Reply::Document(d)) => Json(d).into_response(),
        Ok(Reply::Message(text)) => {
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Ok(_) => not_found_now(),
        Err(r) => r,
    }
}

async fn import(
    State(app): State<App>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    text: String,
) -> Response {
    let _login = authed!(app, h, peer, Level::Administrator);
    let definitions = match body(&text) {
        Ok(b) => b,
        Err(r) => return r,
    };
    change(&app, CtlOp::ImportDefinitions { definitions }).await
}
