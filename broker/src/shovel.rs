//! Shovels embedded in a node: the static ones of the config file and the dynamic ones of
//! `shovel` runtime parameters (which survive restarts with the definitions). They start
//! once the AMQP listener is bound; a parameter set or cleared later starts, replaces or
//! stops its shovel. The local end is an AMQP connection to this node's own listener as
//! the default user (`amqp://` URIs without a host), which keeps the shovel crate
//! independent of the broker's internals.

use crate::broker::BrokerShared;
use crate::meta::{MetaCommand, Metadata};
use std::net::SocketAddr;
use std::sync::Arc;
use warren_shovel::{Env, Kind, ShovelDef, Shovels};

/// Component name of shovel runtime parameters.
pub const COMPONENT: &str = "shovel";

/// Starts the node's shovels: the config file's and those of the stored parameters.
pub fn start(shared: &Arc<BrokerShared>, amqp_addr: SocketAddr) {
    // The shovels' counters and gauges are registered when they start: the process-wide
    // recorder that /metrics renders must be installed first.
    let _ = crate::http::global_metrics();
    let ip = if amqp_addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        amqp_addr.ip()
    };
    let (user, pass) = (
        encode(&shared.config.default_user),
        encode(&shared.config.default_pass),
    );
    let local: warren_shovel::LocalNode = Arc::new(move |vhost: &str| {
        format!(
            "amqp://{user}:{pass}@{}/{}",
            SocketAddr::new(ip, amqp_addr.port()),
            encode(vhost)
        )
    });
    let weak = Arc::downgrade(shared);
    let on_finished: warren_shovel::OnFinished = Arc::new(move |def: &ShovelDef, kind| {
        // A dynamic shovel that is done (delete-after) removes its parameter, as RabbitMQ's.
        if let (Kind::Dynamic, Some(shared)) = (kind, weak.upgrade()) {
            shared.execute_in_background(MetaCommand::ClearParameter {
                vhost: def.vhost.clone(),
                component: COMPONENT.to_owned(),
                name: def.name.clone(),
            });
        }
    });
    let shovels = Shovels::new(Env {
        node_name: shared.config.node_name(),
        local: Some(local),
        on_finished: Some(on_finished),
    });
    if shared.shovels.set(shovels).is_err() {
        return;
    }
    let Some(shovels) = shared.shovels.get() else {
        return;
    };
    for t in &shared.config.shovels {
        match warren_shovel::parse_table(t) {
            Ok(def) => shovels.start(def, Kind::Static),
            // Checked when the config file was read; a table built in code may still be bad.
            Err(e) => tracing::error!(error = %e, "static shovel not started"),
        }
    }
    let dynamic: Vec<(String, String, serde_json::Value)> = shared.with_meta(|m| {
        m.vhosts
            .iter()
            .flat_map(|(v, vh)| {
                vh.parameters
                    .values()
                    .filter(|p| p.component == COMPONENT)
                    .map(move |p| (v.clone(), p.name.clone(), p.value.clone()))
            })
            .collect()
    });
    for (vhost, name, value) in dynamic {
        start_dynamic(shovels, &vhost, &name, &value);
    }
}

fn start_dynamic(shovels: &Shovels, vhost: &str, name: &str, value: &serde_json::Value) {
    if shovels.kind(vhost, name) == Some(Kind::Static) {
        tracing::warn!(shovel = %name, %vhost, "a static shovel of that name runs; the parameter is ignored");
        return;
    }
    match ShovelDef::parse(name, vhost, value) {
        Ok(def) => shovels.start(def, Kind::Dynamic),
        Err(e) => tracing::error!(shovel = %name, %vhost, error = %e, "dynamic shovel not started"),
    }
}

/// Reacts to a `shovel` parameter set or cleared (called with the definitions applied).
pub(crate) fn parameter_changed(shared: &BrokerShared, meta: &Metadata, vhost: &str, name: &str) {
    let Some(shovels) = shared.shovels.get() else {
        return;
    };
    let param = meta
        .vhosts
        .get(vhost)
        .and_then(|vh| vh.parameters.get(&(COMPONENT.to_owned(), name.to_owned())));
    match param {
        Some(p) => start_dynamic(shovels, vhost, name, &p.value),
        None => {
            if shovels.kind(vhost, name) == Some(Kind::Dynamic) {
                shovels.delete(vhost, name);
            }
        }
    }
}

/// Stops the dynamic shovels of a deleted vhost.
pub(crate) fn vhost_removed(shared: &BrokerShared, vhost: &str) {
    if let Some(shovels) = shared.shovels.get() {
        for s in shovels.status() {
            if s.vhost == vhost && s.kind == Kind::Dynamic {
                shovels.delete(vhost, &s.name);
            }
        }
    }
}

/// Percent-encodes a URI component (user, password, vhost).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
