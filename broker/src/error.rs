//! Protocol errors as values: handlers return `Result<_, ChannelError>` and use `?`; only the
//! channel loop decides to turn one into `channel.close`, or — when the code is a hard one —
//! into `connection.close`.

use warren_amqp::ReplyCode;

/// An error raised while handling a method on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    /// The reply code; a hard code closes the whole connection.
    pub code: ReplyCode,
    /// The reply text, with RabbitMQ's `NAME - ` prefix.
    pub text: String,
    /// Class of the method that failed.
    pub class_id: u16,
    /// Method that failed.
    pub method_id: u16,
}

impl ChannelError {
    /// An error with RabbitMQ's `NAME - detail` text.
    pub fn new(code: ReplyCode, detail: impl std::fmt::Display) -> Self {
        ChannelError {
            code,
            text: code.text(detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// 404 `no queue 'q' in vhost 'v'`.
    pub fn no_queue(vhost: &str, queue: &str) -> Self {
        Self::new(
            ReplyCode::NotFound,
            format!("no queue '{queue}' in vhost '{vhost}'"),
        )
    }

    /// 404 `no exchange 'x' in vhost 'v'`.
    pub fn no_exchange(vhost: &str, exchange: &str) -> Self {
        Self::new(
            ReplyCode::NotFound,
            format!("no exchange '{exchange}' in vhost '{vhost}'"),
        )
    }

    /// 405 for a queue another connection holds exclusively.
    pub fn locked(vhost: &str, queue: &str) -> Self {
        Self::new(
            ReplyCode::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration."
            ),
        )
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition(detail: impl std::fmt::Display) -> Self {
        Self::new(ReplyCode::PreconditionFailed, detail)
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(detail: impl std::fmt::Display) -> Self {
        Self::new(ReplyCode::AccessRefused, detail)
    }

    /// 503 COMMAND_INVALID (a connection error).
    pub fn command_invalid(detail: impl std::fmt::Display) -> Self {
        Self::new(ReplyCode::CommandInvalid, detail)
    }

    /// Records which method failed, unless already set.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code.code(), self.text)
    }
}

impl std::error::Error for ChannelError {}
