//! Declaring, deleting and binding exchanges and queues. Each definition change is a
//! `MetaCommand` executed through the node's one apply path; these handlers check what only
//! a channel knows (reserved names, exclusivity, the last declared queue) and reply.

use super::Channel;
use crate::access::{Perm, Resource};
use crate::connection::ConnState;
use crate::error::ChannelError;
use crate::exchange::headers::HeadersBinding;
use crate::meta::{BindingDef, DestinationKind, ExchangeDef, ExchangeKind, MetaCommand, QueueDef};
use warren_amqp::{exchange, queue, AMQPClass, FieldTable};

fn default_exchange_refused() -> ChannelError {
    ChannelError::access_refused("operation not permitted on the default exchange")
}

impl Channel {
    /// The queue a method names: "" means the last queue declared on the channel (404 when
    /// there is none), as RabbitMQ expands it before checking permissions.
    pub(super) fn expand_queue_name<'a>(&'a self, name: &'a str) -> Result<&'a str, ChannelError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue.as_deref().ok_or_else(|| {
            ChannelError::new(
                warren_amqp::ReplyCode::NotFound,
                "no previously declared queue",
            )
        })
    }
}

impl Channel {
    pub(super) async fn exchange_declare(
        &mut self,
        conn: &mut ConnState,
        d: exchange::Declare,
    ) -> Result<(), ChannelError> {
        let name = d.exchange.as_str();
        let vhost = conn.vhost.name.to_string();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        let exists = conn.shared.with_meta(|m| {
            m.vhosts
                .get(&vhost)
                .is_some_and(|v| v.exchanges.contains_key(name))
        });
        if d.passive {
            if !exists {
                return Err(ChannelError::no_exchange(&vhost, name));
            }
        } else {
            let Some(kind) = ExchangeKind::parse(d.kind.as_str()) else {
                return Err(ChannelError::command_invalid(format!(
                    "unknown exchange type '{}'",
                    d.kind.as_str()
                )));
            };
            conn.check(Perm::Configure, Resource::Exchange, name)?;
            if !exists && name.starts_with("amq.") {
                return Err(ChannelError::access_refused(format!(
                    "exchange name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            if let (false, Some(ae)) = (
                exists,
                crate::meta::string_arg(&d.arguments, "alternate-exchange"),
            ) {
                conn.check(Perm::Read, Resource::Exchange, name)?;
                conn.check(Perm::Write, Resource::Exchange, ae)?;
            }
            conn.shared
                .execute(MetaCommand::DeclareExchange {
                    vhost,
                    def: ExchangeDef {
                        name: name.to_string(),
                        kind,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    },
                })
                .await?;
        }
        if !d.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    pub(super) async fn exchange_delete(
        &mut self,
        conn: &mut ConnState,
        d: exchange::Delete,
    ) -> Result<(), ChannelError> {
        let name = d.exchange.as_str();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(ChannelError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                conn.vhost.name
            )));
        }
        conn.check(Perm::Configure, Resource::Exchange, name)?;
        match conn
            .shared
            .execute(MetaCommand::DeleteExchange {
                vhost: conn.vhost.name.to_string(),
                name: name.to_string(),
                if_unused: d.if_unused,
            })
            .await
        {
            // Deleting an exchange that does not exist succeeds, as in RabbitMQ.
            Err(e) if e.code == warren_amqp::ReplyCode::NotFound => {}
            other => other?,
        }
        if !d.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        }
        Ok(())
    }

    fn check_binding_args(
        conn: &ConnState,
        source: &str,
        args: &FieldTable,
    ) -> Result<(), ChannelError> {
        let routes = conn.vhost.routes();
        if let Some(x) = routes.exchanges.get(source) {
            if x.kind == ExchangeKind::Headers {
                HeadersBinding::new(args).map_err(ChannelError::precondition)?;
            }
        }
        Ok(())
    }

    /// Read permission on a binding's source exchange, and topic read permission on the
    /// binding key when it is a topic exchange.
    fn check_bind_source(
        conn: &mut ConnState,
        source: &str,
        routing_key: &str,
    ) -> Result<(), ChannelError> {
        conn.check(Perm::Read, Resource::Exchange, source)?;
        if let Some(x) = conn.vhost.routes().exchanges.get(source) {
            conn.check_topic(Perm::Read, x.kind, source, routing_key)?;
        }
        Ok(())
    }

    async fn exchange_binding(
        conn: &mut ConnState,
        source: &str,
        destination: &str,
        routing_key: &str,
        arguments: FieldTable,
        bind: bool,
    ) -> Result<(), ChannelError> {
        conn.check(Perm::Write, Resource::Exchange, destination)?;
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange_refused());
        }
        Self::check_bind_source(conn, source, routing_key)?;
        if bind {
            Self::check_binding_args(conn, source, &arguments)?;
        }
        let binding = BindingDef {
            source: source.to_string(),
            destination_kind: DestinationKind::Exchange,
            destination: destination.to_string(),
            routing_key: routing_key.to_string(),
            arguments,
        };
        let vhost = conn.vhost.name.to_string();
        conn.shared
            .execute(if bind {
                MetaCommand::Bind { vhost, binding }
            } else {
                MetaCommand::Unbind { vhost, binding }
            })
            .await
    }

    pub(super) async fn exchange_bind(
        &mut self,
        conn: &mut ConnState,
        b: exchange::Bind,
    ) -> Result<(), ChannelError> {
        Self::exchange_binding(
            conn,
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
            b.arguments,
            true,
        )
        .await?;
        if !b.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) async fn exchange_unbind(
        &mut self,
        conn: &mut ConnState,
        u: exchange::Unbind,
    ) -> Result<(), ChannelError> {
        Self::exchange_binding(
            conn,
            u.source.as_str(),
            u.destination.as_str(),
            u.routing_key.as_str(),
            u.arguments,
            false,
        )
        .await?;
        if !u.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_declare(
        &mut self,
        conn: &mut ConnState,
        d: queue::Declare,
    ) -> Result<(), ChannelError> {
        let vhost = conn.vhost.name.to_string();
        if d.queue.as_str().starts_with(crate::direct_reply::PREFIX) {
            // A direct reply-to name: declaring it (passive or not) only tells whether its
            // consumer is still there; it never creates anything.
            let name = d.queue.as_str();
            if !conn.shared.replies.exists(name) {
                return Err(ChannelError::no_queue(&vhost, name));
            }
            if !d.nowait {
                conn.send_method(
                    self.id,
                    &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: warren_amqp::method::short(name),
                        message_count: 0,
                        consumer_count: 1,
                    })),
                );
            }
            return Ok(());
        }
        let name = if d.queue.as_str().is_empty() && !d.passive {
            format!("amq.gen-{}", super::random_suffix())
        } else {
            d.queue.as_str().to_string()
        };
        let handle = if d.passive {
            let name = if name.is_empty() {
                self.last_queue.clone().unwrap_or_default()
            } else {
                name.clone()
            };
            let q = conn
                .vhost
                .queue(&name)
                .ok_or_else(|| ChannelError::no_queue(&vhost, &name))?;
            q.check_access(conn.id)?;
            q
        } else {
            if !d.queue.as_str().is_empty() && name.starts_with("amq.") {
                return Err(ChannelError::access_refused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            conn.check(Perm::Configure, Resource::Queue, &name)?;
            match conn.vhost.queue(&name) {
                // An existing queue is checked for equivalence, not validity.
                Some(existing) => existing.check_access(conn.id)?,
                None => {
                    let dlx = "x-dead-letter-exchange";
                    if let Some(dlx) = crate::meta::string_arg(&d.arguments, dlx) {
                        conn.check(Perm::Read, Resource::Queue, &name)?;
                        conn.check(Perm::Write, Resource::Exchange, dlx)?;
                    }
                    crate::args::validate_queue_args(&name, &vhost, &d.arguments)?;
                    let over = conn.shared.with_meta(|m| {
                        let vh = m.vhosts.get(&vhost)?;
                        let max = vh.limit("max-queues")?;
                        (vh.queues.len() as u64 >= max).then_some(max)
                    });
                    if let Some(max) = over {
                        return Err(ChannelError::precondition(format!(
                            "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({max}) is reached"
                        )));
                    }
                }
            }
            conn.shared
                .execute(MetaCommand::DeclareQueue {
                    vhost: vhost.clone(),
                    def: QueueDef {
                        name: name.clone(),
                        // Exclusive queues never outlive their connection, so never durable.
                        durable: d.durable && !d.exclusive,
                        exclusive_owner: d.exclusive.then_some(conn.id),
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                        uid: rand::random(),
                        node: None,
                    },
                })
                .await?;
            if d.exclusive && !conn.exclusive_queues.contains(&name) {
                conn.exclusive_queues.push(name.clone());
            }
            conn.vhost
                .queue(&name)
                .ok_or_else(|| ChannelError::no_queue(&vhost, &name))?
        };
        self.last_queue = Some(handle.name().to_string());
        let (messages, consumers) = handle.stats().await?;
        if !d.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: warren_amqp::method::short(handle.name()),
                    message_count: messages,
                    consumer_count: consumers,
                })),
            );
        }
        Ok(())
    }

    async fn queue_binding(
        &self,
        conn: &mut ConnState,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        bind: bool,
    ) -> Result<(), ChannelError> {
        let target = self.expand_queue_name(queue)?;
        conn.check(Perm::Write, Resource::Queue, target)?;
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let key = if routing_key.is_empty() && queue.is_empty() {
            target
        } else {
            routing_key
        };
        Self::check_bind_source(conn, exchange, key)?;
        let queue_name = if bind {
            if !exchange.is_empty() && !conn.vhost.routes().exchanges.contains_key(exchange) {
                return Err(ChannelError::no_exchange(&conn.vhost.name, exchange));
            }
            let q = self.resolve_queue(conn, queue)?;
            Self::check_binding_args(conn, exchange, &arguments)?;
            q.name().to_string()
        } else if queue.is_empty() {
            // Unbinding needs neither the queue nor the exchange to exist.
            self.last_queue.clone().unwrap_or_default()
        } else {
            queue.to_string()
        };
        // An empty routing key with an empty queue name means the last queue's name.
        let routing_key = if routing_key.is_empty() && queue.is_empty() {
            queue_name.clone()
        } else {
            routing_key.to_string()
        };
        let binding = BindingDef {
            source: exchange.to_string(),
            destination_kind: DestinationKind::Queue,
            destination: queue_name,
            routing_key,
            arguments,
        };
        let vhost = conn.vhost.name.to_string();
        conn.shared
            .execute(if bind {
                MetaCommand::Bind { vhost, binding }
            } else {
                MetaCommand::Unbind { vhost, binding }
            })
            .await
    }

    pub(super) async fn queue_bind(
        &mut self,
        conn: &mut ConnState,
        b: queue::Bind,
    ) -> Result<(), ChannelError> {
        self.queue_binding(
            conn,
            b.queue.as_str(),
            b.exchange.as_str(),
            b.routing_key.as_str(),
            b.arguments,
            true,
        )
        .await?;
        if !b.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_unbind(
        &mut self,
        conn: &mut ConnState,
        u: queue::Unbind,
    ) -> Result<(), ChannelError> {
        self.queue_binding(
            conn,
            u.queue.as_str(),
            u.exchange.as_str(),
            u.routing_key.as_str(),
            u.arguments,
            false,
        )
        .await?;
        conn.send_method(
            self.id,
            &AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        );
        Ok(())
    }

    pub(super) async fn queue_purge(
        &mut self,
        conn: &mut ConnState,
        p: queue::Purge,
    ) -> Result<(), ChannelError> {
        conn.check(
            Perm::Read,
            Resource::Queue,
            self.expand_queue_name(p.queue.as_str())?,
        )?;
        let q = self.resolve_queue(conn, p.queue.as_str())?;
        let n = q.purge().await?;
        if !p.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }

    pub(super) async fn queue_delete(
        &mut self,
        conn: &mut ConnState,
        d: queue::Delete,
    ) -> Result<(), ChannelError> {
        let name = d.queue.as_str();
        conn.check(
            Perm::Configure,
            Resource::Queue,
            self.expand_queue_name(name)?,
        )?;
        let n = match self.resolve_queue(conn, name) {
            Ok(q) => {
                let n = q.check_delete(d.if_unused, d.if_empty).await?;
                let name = q.name().to_string();
                match conn
                    .shared
                    .execute(MetaCommand::DeleteQueue {
                        vhost: conn.vhost.name.to_string(),
                        name: name.clone(),
                    })
                    .await
                {
                    Err(e) if e.code == warren_amqp::ReplyCode::NotFound => {}
                    other => other?,
                }
                conn.exclusive_queues.retain(|q| *q != name);
                n
            }
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(e) if e.code == warren_amqp::ReplyCode::NotFound => 0,
            Err(e) => return Err(e),
        };
        if !d.nowait {
            conn.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: n,
                })),
            );
        }
        Ok(())
    }
}
