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
    /// Further routing keys from the `CC` and `BCC` headers (the `BCC` header itself is
    /// removed from the properties, its keys are kept here so that dead-lettering routes the
    /// message with every key it was published with, as RabbitMQ does). Empty for most
    /// messages, which costs no allocation.
    pub extra_keys: Box<[Arc<str>]>,
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

    /// Every routing key: the published one first, then the CC and BCC ones.
    pub fn routing_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.routing_key).chain(self.extra_keys.iter().map(|k| &**k))
    }
}
