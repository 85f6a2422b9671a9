//! Exchanges as routing tables: each exchange's bindings compiled into the structure its type
//! routes with (a map for direct, a list for fanout, a trie for topic, compiled matchers for
//! headers). Tables are rebuilt when bindings change and read without locks by publishers;
//! a direct exchange's table is a persistent map, so a new binding makes a new table in
//! O(log n) (sharing the rest with the old one) instead of a rebuild.

pub mod headers;
pub mod topic;

use crate::meta::{BindingDef, DestinationKind, ExchangeDef, ExchangeKind};
use headers::HeadersBinding;
use std::collections::HashMap;
use std::sync::Arc;
use topic::TopicTrie;
use warren_amqp::FieldTable;

/// Where a binding routes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

#[derive(Clone)]
enum Router {
    Direct(crate::vhost::HashMap<Arc<str>, Arc<[Dest]>>),
    Fanout(Vec<Dest>),
    Topic(TopicTrie<Dest>),
    Headers(Vec<(HeadersBinding, Dest)>),
}

/// An exchange ready to route: its definition's flags and its compiled bindings.
#[derive(Clone)]
pub struct ExchangeRoute {
    /// The exchange's name.
    pub name: Arc<str>,
    /// Its type.
    pub kind: ExchangeKind,
    /// Clients may not publish to it.
    pub internal: bool,
    /// Where messages it routes nowhere go (`alternate-exchange` argument or policy).
    pub alternate: Option<Arc<str>>,
    router: Router,
}

fn dest_of(b: &BindingDef) -> Dest {
    match b.destination_kind {
        DestinationKind::Queue => Dest::Queue(Arc::from(b.destination.as_str())),
        DestinationKind::Exchange => Dest::Exchange(Arc::from(b.destination.as_str())),
    }
}

impl ExchangeRoute {
    /// Compiles an exchange's bindings.
    pub fn build<'a>(def: &ExchangeDef, bindings: impl Iterator<Item = &'a BindingDef>) -> Self {
        let router = match def.kind {
            ExchangeKind::Direct => {
                let mut map: HashMap<&str, Vec<Dest>> = HashMap::new();
                for b in bindings {
                    let d = dest_of(b);
                    let v = map.entry(b.routing_key.as_str()).or_default();
                    if !v.contains(&d) {
                        v.push(d);
                    }
                }
                Router::Direct(
                    map.into_iter()
                        .map(|(k, v)| (Arc::from(k), Arc::from(v)))
                        .collect(),
                )
            }
            ExchangeKind::Fanout => {
                let mut v: Vec<Dest> = Vec::new();
                for b in bindings {
                    let d = dest_of(b);
                    if !v.contains(&d) {
                        v.push(d);
                    }
                }
                Router::Fanout(v)
            }
            ExchangeKind::Topic => {
                let mut trie = TopicTrie::new();
                for b in bindings {
                    trie.insert(&b.routing_key, dest_of(b));
                }
                Router::Topic(trie)
            }
            ExchangeKind::Headers => Router::Headers(
                bindings
                    .filter_map(|b| {
                        HeadersBinding::new(&b.arguments)
                            .ok()
                            .map(|h| (h, dest_of(b)))
                    })
                    .collect(),
            ),
        };
        ExchangeRoute {
            name: Arc::from(def.name.as_str()),
            kind: def.kind,
            internal: def.internal,
            alternate: None,
            router,
        }
    }

    /// This route with one more binding, made without a rebuild where the exchange type
    /// allows it (direct); None when the caller must rebuild from the definitions.
    pub fn with_binding(&self, b: &BindingDef) -> Option<ExchangeRoute> {
        let Router::Direct(map) = &self.router else {
            return None;
        };
        let d = dest_of(b);
        let dests: Arc<[Dest]> = match map.get(b.routing_key.as_str()) {
            // Bound already (with other arguments): nothing changes for routing.
            Some(v) if v.contains(&d) => return Some(self.clone()),
            Some(v) => v.iter().cloned().chain(std::iter::once(d)).collect(),
            None => Arc::from([d]),
        };
        let mut route = self.clone();
        route.router = Router::Direct(map.update(Arc::from(b.routing_key.as_str()), dests));
        Some(route)
    }

    /// Sets the alternate exchange.
    pub fn with_alternate(mut self, alternate: Option<Arc<str>>) -> Self {
        self.alternate = alternate;
        self
    }

    /// Appends the destinations a message with this routing key (and these headers, for a
    /// headers exchange) goes to. `headers` is only called for headers exchanges.
    pub fn route(
        &self,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Dest>,
    ) {
        match &self.router {
            Router::Direct(map) => {
                if let Some(v) = map.get(routing_key) {
                    out.extend(v.iter().cloned());
                }
            }
            Router::Fanout(v) => out.extend(v.iter().cloned()),
            Router::Topic(trie) => trie.route(routing_key, out),
            Router::Headers(bindings) => {
                if bindings.is_empty() {
                    return;
                }
                let h = headers();
                for (binding, dest) in bindings {
                    if binding.matches(h.as_ref()) {
                        out.push(dest.clone());
                    }
                }
            }
        }
    }
}
