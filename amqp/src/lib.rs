//! warren-amqp: the AMQP 0-9-1 protocol as Warren speaks it.
//!
//! Frames are read from and written to byte buffers (no sockets, no runtime): [`frame`]
//! decodes with a partial-frame state (`Ok(None)` means "read more") and checks sizes before
//! buffering; methods and properties are amq-protocol's types, re-exported here; [`reply`]
//! holds RabbitMQ's reply codes split into channel (soft) and connection (hard) errors.
//! The hot frames (content header and body, `basic.deliver`, `basic.ack`) are encoded by
//! hand so that a body stays a [`bytes::Bytes`] from socket to socket.

pub mod frame;
pub mod method;
pub mod properties;
pub mod reply;
mod tables;

pub use amq_protocol::protocol::{
    access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass,
};
pub use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
pub use frame::{ContentHeader, Frame, FrameError, PublishFrame};
pub use properties::Properties;
pub use reply::ReplyCode;

/// Low-level wire encoders and decoders of amq-protocol, for field tables and values.
pub mod wire {
    pub use crate::tables::field_table_within_limit;
    pub use amq_protocol::frame::WriteContext;
    pub use amq_protocol::types::generation::{gen_field_table, gen_value};
    pub use amq_protocol::types::parsing::{parse_field_table, parse_value};
}
