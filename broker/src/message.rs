//! A published message: routed once, then shared by every queue it reaches.

use bytes::Bytes;
use std::sync::Arc;
use warren_amqp::Properties;

/// A message as published: cheap to clone (`Arc`), body as `Bytes` end to end.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Arc<str>,
    /// The routing key it was published with.
    pub routing_key: Arc<str>,
    /// Its properties, as the publisher encoded them.
    pub properties: Properties,
    /// Its body.
    pub body: Bytes,
}

impl Message {
    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}
