//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies that go straight to the requesting
//! channel without a queue. A channel that consumes from the pseudo-queue (in no-ack mode,
//! once) gets a unique name, `amq.rabbitmq.reply-to.<random>`, registered here; a request it
//! publishes with `reply_to = amq.rabbitmq.reply-to` carries that name instead; a reply
//! published to the default exchange with that name as routing key is handed to the
//! channel's connection at once. Nothing is stored: replies to a channel that has gone are
//! unroutable, as in RabbitMQ.

use crate::delivery::{ChannelRef, ConnEvent};
use crate::message::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The pseudo-queue clients consume from and name in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of the names handed out to reply consumers.
pub const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Reply consumers of the node, by the name replies are routed with.
#[derive(Default)]
pub struct ReplyRegistry {
    /// A std mutex: held for one map operation, never across an await.
    map: Mutex<HashMap<String, (ChannelRef, Arc<str>)>>,
}

impl ReplyRegistry {
    /// Registers a channel's reply consumer under `name`.
    pub fn register(&self, name: String, channel: ChannelRef, consumer_tag: Arc<str>) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (channel, consumer_tag));
    }

    /// Forgets a reply consumer.
    pub fn unregister(&self, name: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// True when a reply consumer has this name.
    pub fn exists(&self, name: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// Hands a reply to the consumer named by its routing key; false when there is none.
    pub fn deliver(&self, name: &str, msg: Arc<Message>) -> bool {
        let target = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        match target {
            Some((channel, consumer_tag)) => channel
                .events
                .send(ConnEvent::Reply {
                    channel: channel.key,
                    consumer_tag,
                    msg,
                })
                .is_ok(),
            None => false,
        }
    }
}
