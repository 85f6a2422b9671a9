//! Names of methods and short constructors for the methods a server sends.

use crate::{basic, channel, connection, AMQPClass, ShortString};

/// The spec's name of a method (`basic.publish`), or `unknown`.
pub fn name(class_id: u16, method_id: u16) -> &'static str {
    match (class_id, method_id) {
        (10, 10) => "connection.start",
        (10, 11) => "connection.start_ok",
        (10, 20) => "connection.secure",
        (10, 21) => "connection.secure_ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune_ok",
        (10, 40) => "connection.open",
        (10, 41) => "connection.open_ok",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close_ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (10, 70) => "connection.update_secret",
        (10, 71) => "connection.update_secret_ok",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open_ok",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow_ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close_ok",
        (30, 10) => "access.request",
        (30, 11) => "access.request_ok",
        (40, 10) => "exchange.declare",
        (40, 11) => "exchange.declare_ok",
        (40, 20) => "exchange.delete",
        (40, 21) => "exchange.delete_ok",
        (40, 30) => "exchange.bind",
        (40, 31) => "exchange.bind_ok",
        (40, 40) => "exchange.unbind",
        (40, 51) => "exchange.unbind_ok",
        (50, 10) => "queue.declare",
        (50, 11) => "queue.declare_ok",
        (50, 20) => "queue.bind",
        (50, 21) => "queue.bind_ok",
        (50, 30) => "queue.purge",
        (50, 31) => "queue.purge_ok",
        (50, 40) => "queue.delete",
        (50, 41) => "queue.delete_ok",
        (50, 50) => "queue.unbind",
        (50, 51) => "queue.unbind_ok",
        (60, 10) => "basic.qos",
        (60, 11) => "basic.qos_ok",
        (60, 20) => "basic.consume",
        (60, 21) => "basic.consume_ok",
        (60, 30) => "basic.cancel",
        (60, 31) => "basic.cancel_ok",
        (60, 40) => "basic.publish",
        (60, 50) => "basic.return",
        (60, 60) => "basic.deliver",
        (60, 70) => "basic.get",
        (60, 71) => "basic.get_ok",
        (60, 72) => "basic.get_empty",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover_async",
        (60, 110) => "basic.recover",
        (60, 111) => "basic.recover_ok",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (85, 11) => "confirm.select_ok",
        (90, 10) => "tx.select",
        (90, 11) => "tx.select_ok",
        (90, 20) => "tx.commit",
        (90, 21) => "tx.commit_ok",
        (90, 30) => "tx.rollback",
        (90, 31) => "tx.rollback_ok",
        _ => "unknown",
    }
}

/// True when the class and method ids name a method of AMQP 0-9-1 (with RabbitMQ's extensions).
pub fn is_known(class_id: u16, method_id: u16) -> bool {
    name(class_id, method_id) != "unknown"
}

/// The class and method ids of a method.
pub fn ids(method: &AMQPClass) -> (u16, u16) {
    (method.get_amqp_class_id(), method.get_amqp_method_id())
}

/// A short string cut to the 255 bytes the protocol allows, on a character boundary.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

/// `connection.close` with a reply.
pub fn connection_close(code: u16, text: &str, class_id: u16, method_id: u16) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: code,
        reply_text: short(text),
        class_id,
        method_id,
    }))
}

/// `channel.close` with a reply.
pub fn channel_close(code: u16, text: &str, class_id: u16, method_id: u16) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: code,
        reply_text: short(text),
        class_id,
        method_id,
    }))
}

/// `basic.return` for a message that could not be routed or delivered.
pub fn basic_return(code: u16, text: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
        reply_code: code,
        reply_text: short(text),
        exchange: short(exchange),
        routing_key: short(routing_key),
    }))
}

/// `basic.cancel` sent by the server (consumer cancel notification).
pub fn basic_cancel(consumer_tag: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: short(consumer_tag),
        nowait: true,
    }))
}
