//! What `list_channels` and `list_consumers` show about a channel: read from the channel's
//! own state by its connection task when asked.

use super::Channel;
use serde::Serialize;

/// A channel as `list_channels` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelInfo {
    /// The channel number.
    pub number: u16,
    /// In tx mode.
    pub transactional: bool,
    /// In confirm mode.
    pub confirm: bool,
    /// basic.qos prefetch for new consumers.
    pub prefetch_count: u32,
    /// basic.qos global prefetch.
    pub global_prefetch_count: u32,
    /// Deliveries not yet acked.
    pub messages_unacknowledged: usize,
    /// The channel's consumers.
    pub consumers: Vec<ConsumerInfo>,
}

/// A consumer as `list_consumers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerInfo {
    /// The consumer tag.
    pub consumer_tag: String,
    /// The queue it consumes from.
    pub queue: String,
    /// The vhost of that queue.
    pub vhost: String,
    /// Deliveries need acks.
    pub ack_required: bool,
    /// An exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch limit (0: none).
    pub prefetch_count: u32,
}

impl Channel {
    /// A snapshot for the admin tools.
    pub fn info(&self) -> ChannelInfo {
        let mut consumers: Vec<ConsumerInfo> = self
            .consumers
            .iter()
            .map(|(tag, c)| ConsumerInfo {
                consumer_tag: tag.to_string(),
                queue: c.queue.name().to_string(),
                vhost: c.queue.vhost().to_string(),
                ack_required: !c.no_ack,
                exclusive: c.exclusive,
                prefetch_count: c.prefetch,
            })
            .collect();
        consumers.sort_by(|a, b| a.consumer_tag.cmp(&b.consumer_tag));
        ChannelInfo {
            number: self.id,
            transactional: self.tx.is_some(),
            confirm: self.confirm.is_some(),
            prefetch_count: self.prefetch,
            global_prefetch_count: self.flow.global_limit(),
            messages_unacknowledged: self.unacked.len(),
            consumers,
        }
    }
}
