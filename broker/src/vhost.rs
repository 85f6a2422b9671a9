//! A vhost at run time: its routing snapshot (exchanges compiled for routing, and the queue
//! handles), swapped whole when definitions change and read without locks on every publish.
//! The snapshot's maps are persistent (structure-sharing) maps, so a new snapshot costs
//! O(log n) to make and to drop whatever the number of queues and exchanges.

use crate::exchange::{Dest, ExchangeRoute};
use crate::message::Message;
use crate::queue::QueueHandle;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// A persistent map with a fast hasher (foldhash: randomly seeded, so names a client picks
/// cannot be made to collide on purpose), looked up on every published message.
pub type HashMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// What publishers read: every exchange's routing table and every queue's handle.
#[derive(Clone, Default)]
pub struct Routes {
    /// Exchanges by name.
    pub exchanges: HashMap<Arc<str>, Arc<ExchangeRoute>>,
    /// Queues by name.
    pub queues: HashMap<Arc<str>, QueueHandle>,
}

/// A vhost's run-time state.
pub struct Vhost {
    /// The vhost's name.
    pub name: Arc<str>,
    /// The routing snapshot. `ArcSwap`: publishers load it lock-free; the one writer (the
    /// definitions apply path, which is serialized) stores a modified copy.
    routes: ArcSwap<Routes>,
}

/// Most exchange-to-exchange hops a message follows (a guard; cycles are cut anyway).
const MAX_HOPS: usize = 64;

impl Vhost {
    /// A vhost with nothing in it.
    pub fn new(name: &str) -> Self {
        Vhost {
            name: Arc::from(name),
            routes: ArcSwap::from_pointee(Routes::default()),
        }
    }

    /// The current routing snapshot.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Replaces the routing snapshot (definitions apply path only).
    pub(crate) fn update(&self, f: impl FnOnce(&mut Routes)) {
        // Cheap: the maps share their structure with the current snapshot.
        let mut routes = Routes::clone(&self.routes.load());
        f(&mut routes);
        self.routes.store(Arc::new(routes));
    }

    /// A queue's handle.
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.routes.load().queues.get(name).cloned()
    }

    /// Routes a message from `exchange` to the queues it reaches, each queue once, as
    /// RabbitMQ's `rabbit_exchange:route` does: with every routing key of the message (the
    /// published one, then CC and BCC), following exchange-to-exchange bindings (each exchange
    /// visited once, so cycles are cut), and sending what an exchange routes nowhere to its
    /// alternate exchange.
    pub fn route(
        routes: &Routes,
        exchange: &ExchangeRoute,
        msg: &Message,
        out: &mut Vec<QueueHandle>,
    ) {
        let mut headers_cache: Option<Option<warren_amqp::FieldTable>> = None;
        let mut headers = || {
            headers_cache
                .get_or_insert_with(|| msg.properties.parse().headers().clone())
                .clone()
        };
        let push = |out: &mut Vec<QueueHandle>, q: &QueueHandle| {
            if !out.iter().any(|o| o.same(q)) {
                out.push(q.clone());
            }
        };
        if exchange.name.is_empty() {
            // The default exchange: every key names a queue; it has no alternate exchange.
            for key in msg.routing_keys() {
                if let Some(q) = routes.queues.get(key) {
                    push(out, q);
                }
            }
            return;
        }
        let mut dests = Vec::new();
        let mut visited: Vec<Arc<str>> = Vec::new();
        let mut current = Some(exchange);
        let mut pending: Vec<Arc<str>> = Vec::new();
        while let Some(x) = current.take() {
            visited.push(x.name.clone());
            let start = dests.len();
            for key in msg.routing_keys() {
                x.route(key, &mut headers, &mut dests);
            }
            if dests.len() == start {
                if let Some(ae) = &x.alternate {
                    pending.push(ae.clone());
                }
            }
            for d in dests.drain(start..) {
                match d {
                    Dest::Queue(name) => {
                        if let Some(q) = routes.queues.get(&name) {
                            push(out, q);
                        }
                    }
                    Dest::Exchange(name) => pending.push(name),
                }
            }
            while let Some(name) = pending.pop() {
                if visited.len() >= MAX_HOPS || visited.contains(&name) {
                    continue;
                }
                if let Some(next) = routes.exchanges.get(&name) {
                    current = Some(next);
                    break;
                }
            }
        }
    }
}
