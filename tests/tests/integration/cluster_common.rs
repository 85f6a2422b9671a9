//! Helpers the cluster tests share: a client connection to a node, and its
//! `cluster_status` as JSON.

use lapin::{Connection, ConnectionProperties};
use warren_tests::cluster::ClusterNode;
use warren_tests::within;

/// A lapin connection to a node's AMQP port.
pub async fn connect(node: &ClusterNode) -> Connection {
    within(
        10,
        "connect",
        Connection::connect(&node.uri(), ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {}: {e}", node.name))
}

/// Parses warrenctl's JSON output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `cluster_status --formatter json` of a node.
pub async fn status(node: &ClusterNode) -> serde_json::Value {
    json(
        &node
            .ctl_ok(&["cluster_status", "--formatter", "json"])
            .await,
    )
}
