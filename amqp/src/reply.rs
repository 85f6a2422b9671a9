//! RabbitMQ's reply codes: which ones close a channel (soft) and which close the connection
//! (hard), and their names as they appear in reply texts (`NOT_FOUND - no queue 'q'...`).

/// An AMQP reply code, as sent in `channel.close`, `connection.close` and `basic.return`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyCode {
    /// 200: normal close.
    Success,
    /// 311: the message is larger than the server accepts.
    ContentTooLarge,
    /// 312: a mandatory message could not be routed to any queue.
    NoRoute,
    /// 313: an immediate message had no consumer (RabbitMQ does not implement immediate).
    NoConsumers,
    /// 320: the server is shutting down or an operator closed the connection.
    ConnectionForced,
    /// 402: the virtual host path is invalid.
    InvalidPath,
    /// 403: the user may not do this.
    AccessRefused,
    /// 404: the entity does not exist.
    NotFound,
    /// 405: another connection holds an exclusive lock on the entity.
    ResourceLocked,
    /// 406: a precondition (equivalence, emptiness, argument validity) failed.
    PreconditionFailed,
    /// 501: a frame could not be decoded.
    FrameError,
    /// 502: a method or field was malformed.
    SyntaxError,
    /// 503: a method arrived that is invalid in this state.
    CommandInvalid,
    /// 504: a channel was used in a way that is invalid (not open, already open).
    ChannelError,
    /// 505: a frame arrived that was not expected (content without a publish, etc.).
    UnexpectedFrame,
    /// 506: the server ran out of a resource (e.g. channel_max reached).
    ResourceError,
    /// 530: the operation is not allowed (vhost access, etc.).
    NotAllowed,
    /// 540: the method is not implemented (e.g. `immediate`).
    NotImplemented,
    /// 541: the server failed internally.
    InternalError,
}

impl ReplyCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            ReplyCode::Success => 200,
            ReplyCode::ContentTooLarge => 311,
            ReplyCode::NoRoute => 312,
            ReplyCode::NoConsumers => 313,
            ReplyCode::ConnectionForced => 320,
            ReplyCode::InvalidPath => 402,
            ReplyCode::AccessRefused => 403,
            ReplyCode::NotFound => 404,
            ReplyCode::ResourceLocked => 405,
            ReplyCode::PreconditionFailed => 406,
            ReplyCode::FrameError => 501,
            ReplyCode::SyntaxError => 502,
            ReplyCode::CommandInvalid => 503,
            ReplyCode::ChannelError => 504,
            ReplyCode::UnexpectedFrame => 505,
            ReplyCode::ResourceError => 506,
            ReplyCode::NotAllowed => 530,
            ReplyCode::NotImplemented => 540,
            ReplyCode::InternalError => 541,
        }
    }

    /// The name RabbitMQ puts in front of a reply text.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::Success => "OK",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// True when the code closes the whole connection rather than one channel.
    pub fn is_hard(self) -> bool {
        !matches!(
            self,
            ReplyCode::Success
                | ReplyCode::ContentTooLarge
                | ReplyCode::NoRoute
                | ReplyCode::NoConsumers
                | ReplyCode::AccessRefused
                | ReplyCode::NotFound
                | ReplyCode::ResourceLocked
                | ReplyCode::PreconditionFailed
        )
    }

    /// The code for a numeric value, if it is one the protocol defines.
    pub fn from_code(code: u16) -> Option<Self> {
        use ReplyCode::*;
        [
            Success,
            ContentTooLarge,
            NoRoute,
            NoConsumers,
            ConnectionForced,
            InvalidPath,
            AccessRefused,
            NotFound,
            ResourceLocked,
            PreconditionFailed,
            FrameError,
            SyntaxError,
            CommandInvalid,
            ChannelError,
            UnexpectedFrame,
            ResourceError,
            NotAllowed,
            NotImplemented,
            InternalError,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// A reply text in RabbitMQ's form: `NAME - detail`.
    pub fn text(self, detail: impl std::fmt::Display) -> String {
        format!("{} - {}", self.name(), detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_and_hard_codes_split_as_rabbitmq_does() {
        for code in [403, 404, 405, 406, 311, 312, 313] {
            assert!(
                !ReplyCode::from_code(code).expect("known code").is_hard(),
                "{code}"
            );
        }
        for code in [320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541] {
            assert!(
                ReplyCode::from_code(code).expect("known code").is_hard(),
                "{code}"
            );
        }
        assert_eq!(ReplyCode::from_code(999), None);
    }

    #[test]
    fn text_has_rabbitmq_prefix() {
        assert_eq!(
            ReplyCode::NotFound.text("no queue 'x' in vhost '/'"),
            "NOT_FOUND - no queue 'x' in vhost '/'"
        );
    }
}
