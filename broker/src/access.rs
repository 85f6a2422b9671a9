//! Permissions as RabbitMQ enforces them: per user and vhost, three regular expressions over
//! resource names — configure (declare, delete), write (publish to an exchange, bind a
//! destination) and read (consume, get, purge, bind from an exchange) — and, for topic
//! exchanges, topic permissions over routing keys.
//!
//! Channel handlers call [`ConnState::check`] / [`ConnState::check_topic`] first thing, in
//! RabbitMQ's order (see `rabbit_channel`), and get RabbitMQ's 403 texts. The compiled
//! expressions are cached per (user, vhost) in an [`AccessRegistry`] on the node, and each
//! connection keeps the entry it uses; any permission change bumps an epoch, so a change
//! takes effect at the next check on every open channel.

use crate::connection::ConnState;
use crate::error::ChannelError;
use crate::meta::{ExchangeKind, Metadata};
use regex::Regex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The three kinds of permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// Declare and delete.
    Configure,
    /// Publish, and be bound to.
    Write,
    /// Consume, get, purge, and bind from.
    Read,
}

/// What a permission is checked on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A queue.
    Queue,
    /// An exchange (the default exchange is checked as `amq.default`).
    Exchange,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// One compiled permission expression.
#[derive(Debug)]
enum Matcher {
    /// `.*`: everything (the common case, checked without running a regex).
    Any,
    /// Anything else.
    Regex(Regex),
    /// An expression that does not compile (from an old log): matches nothing.
    Nothing,
}

/// PCRE (RabbitMQ's regular expressions) reads a `{` that does not start a quantifier
/// (`{n}`, `{n,}`, `{n,m}`) as a literal; Rust's `regex` refuses it. Such braces are
/// escaped, so expressions like `^{username}\.` mean the same in both.
fn pcre_braces(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 4);
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.get(i + 1) {
                    out.push(*n);
                }
                i += 2;
                continue;
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                let close = chars[i + 1..].iter().position(|&c| c == '}');
                let quantifier = close.filter(|&n| {
                    let body: String = chars[i + 1..i + 1 + n].iter().collect();
                    let (min, max) = body.split_once(',').unwrap_or((&body, "0"));
                    !min.is_empty()
                        && min.chars().all(|d| d.is_ascii_digit())
                        && max.chars().all(|d| d.is_ascii_digit())
                });
                if let Some(n) = quantifier {
                    out.extend(&chars[i..=i + 1 + n]);
                    i += n + 2;
                    continue;
                }
                out.push_str("\\{");
                i += 1;
                continue;
            }
            '}' if !in_class => {
                out.push_str("\\}");
                i += 1;
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

fn compile_regex(p: &str) -> Result<Regex, regex::Error> {
    Regex::new(&pcre_braces(p))
}

impl Matcher {
    fn compile(pattern: &str) -> Matcher {
        match pattern {
            ".*" | "^.*" | "^.*$" | ".*$" => Matcher::Any,
            // RabbitMQ reads an empty expression as `^$`.
            "" => Regex::new("^$").map_or(Matcher::Nothing, Matcher::Regex),
            p => match compile_regex(p) {
                Ok(r) => Matcher::Regex(r),
                Err(e) => {
                    tracing::warn!(pattern = p, error = %e, "a stored permission expression does not compile; it matches nothing");
                    Matcher::Nothing
                }
            },
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Regex(r) => r.is_match(s),
            Matcher::Nothing => false,
        }
    }
}

/// Checks that a permission expression compiles (RabbitMQ refuses invalid ones when they
/// are set). Warren's expressions are Rust `regex` syntax: PCRE without look-around or
/// back-references.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Ok(());
    }
    compile_regex(pattern)
        .map(|_| ())
        .map_err(|e| format!("regular expression '{pattern}' is invalid: {e}"))
}

/// A user's compiled permissions in one vhost.
#[derive(Debug)]
pub struct UserAccess {
    /// configure, write, read; None when the user has no permissions in the vhost.
    perms: Option<[Matcher; 3]>,
    /// Topic permissions by exchange: write, read.
    topics: HashMap<String, [Matcher; 2]>,
}

impl UserAccess {
    fn compile(meta: &Metadata, user: &str, vhost: &str) -> UserAccess {
        let perms = meta
            .permissions
            .get(&(user.to_string(), vhost.to_string()))
            .map(|p| {
                [
                    Matcher::compile(&p.configure),
                    Matcher::compile(&p.write),
                    Matcher::compile(&p.read),
                ]
            });
        let topics = meta
            .topic_permissions
            .iter()
            .filter(|((u, v, _), _)| u == user && v == vhost)
            .map(|((_, _, x), p)| {
                // RabbitMQ expands these variables in topic expressions before matching.
                let expand = |s: &str| s.replace("{username}", user).replace("{vhost}", vhost);
                (
                    x.clone(),
                    [
                        Matcher::compile(&expand(&p.write)),
                        Matcher::compile(&expand(&p.read)),
                    ],
                )
            })
            .collect();
        UserAccess { perms, topics }
    }

    fn allows(&self, perm: Perm, name: &str) -> bool {
        let Some(p) = &self.perms else {
            return false;
        };
        let m = match perm {
            Perm::Configure => &p[0],
            Perm::Write => &p[1],
            Perm::Read => &p[2],
        };
        m.matches(name)
    }

    /// Topic access: allowed when the user has no topic permissions for the exchange.
    fn allows_topic(&self, perm: Perm, exchange: &str, routing_key: &str) -> bool {
        match self.topics.get(exchange) {
            None => true,
            Some([write, read]) => match perm {
                Perm::Write => write.matches(routing_key),
                Perm::Read => read.matches(routing_key),
                Perm::Configure => true,
            },
        }
    }
}

type CacheKey = (String, String);

/// The node's cache of compiled permissions, invalidated whenever permissions change.
#[derive(Debug, Default)]
pub struct AccessRegistry {
    /// Bumped on every permission change; connections compare it with the epoch of the
    /// entry they hold.
    epoch: AtomicU64,
    /// Compiled entries. A std mutex: held only to look up, insert or clear, never while
    /// compiling and never across an await; the definitions lock is never taken under it.
    cache: Mutex<HashMap<CacheKey, Arc<UserAccess>>>,
}

impl AccessRegistry {
    /// Forgets every compiled entry (called after a permission change is applied).
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The compiled permissions of `user` in `vhost` and the epoch they belong to.
    fn get(
        &self,
        user: &str,
        vhost: &str,
        compile: impl FnOnce() -> UserAccess,
    ) -> (u64, Arc<UserAccess>) {
        let epoch = self.current_epoch();
        let key = (user.to_string(), vhost.to_string());
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return (epoch, hit.clone());
        }
        let compiled = Arc::new(compile());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Inserted only if nothing changed while compiling; otherwise the caller sees a
        // new epoch at its next check and compiles again.
        if self.current_epoch() == epoch {
            cache.insert(key, compiled.clone());
        }
        (epoch, compiled)
    }
}

/// What a connection holds: the compiled permissions of its user in its vhost.
#[derive(Debug, Default)]
pub struct AccessCache {
    entry: Option<(u64, Arc<UserAccess>)>,
}

impl ConnState {
    /// Makes sure the connection holds its user's current permissions.
    fn refresh_access(&mut self) -> &UserAccess {
        let epoch = self.shared.access.current_epoch();
        let entry = match self.access.entry.take() {
            Some(held) if held.0 == epoch => held,
            _ => {
                let (shared, user, vhost) = (&self.shared, &self.user, &self.vhost.name);
                shared.access.get(user, vhost, || {
                    shared.with_meta(|m| UserAccess::compile(m, user, vhost))
                })
            }
        };
        &self.access.entry.insert(entry).1
    }

    /// Checks a permission on a queue or exchange of the connection's vhost; 403 with
    /// RabbitMQ's text when refused.
    pub fn check(&mut self, perm: Perm, kind: Resource, name: &str) -> Result<(), ChannelError> {
        // RabbitMQ checks the default exchange under the name `amq.default`.
        let name = if kind == Resource::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self.refresh_access().allows(perm, name) {
            return Ok(());
        }
        Err(ChannelError::access_refused(format!(
            "access to {} '{name}' in vhost '{}' refused for user '{}'",
            kind.name(),
            self.vhost.name,
            self.user
        )))
    }

    /// Checks a topic permission: publishing to (write) or binding from (read) a topic
    /// exchange with a routing key. Other exchange types are not checked.
    pub fn check_topic(
        &mut self,
        perm: Perm,
        kind: ExchangeKind,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), ChannelError> {
        if kind != ExchangeKind::Topic
            || self
                .refresh_access()
                .allows_topic(perm, exchange, routing_key)
        {
            return Ok(());
        }
        Err(ChannelError::access_refused(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.vhost.name, self.user
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaCommand, Permission, TopicPermission, UserDef};

    fn meta() -> Metadata {
        let mut m = Metadata::default();
        let cmds = vec![
            MetaCommand::AddVhost { name: "v".into() },
            MetaCommand::PutUser(UserDef {
                name: "bob".into(),
                password_hash: String::new(),
                tags: vec![],
                hashing_algorithm: Default::default(),
                limits: serde_json::json!({}),
            }),
            MetaCommand::SetPermissions {
                user: "bob".into(),
                vhost: "v".into(),
                permission: Permission {
                    configure: "^c-".into(),
                    write: "".into(),
                    read: ".*".into(),
                },
            },
            MetaCommand::SetTopicPermissions {
                user: "bob".into(),
                vhost: "v".into(),
                exchange: "amq.topic".into(),
                permission: TopicPermission {
                    write: "^{username}\\.".into(),
                    read: "^{vhost}\\.".into(),
                },
            },
        ];
        for c in cmds {
            m.apply(c).expect("applies");
        }
        m
    }

    #[test]
    fn expressions_match_as_rabbitmq_reads_them() {
        let a = UserAccess::compile(&meta(), "bob", "v");
        assert!(a.allows(Perm::Configure, "c-queue"));
        assert!(!a.allows(Perm::Configure, "queue"));
        // An empty expression is `^$`.
        assert!(!a.allows(Perm::Write, "x"));
        assert!(a.allows(Perm::Write, ""));
        assert!(a.allows(Perm::Read, "anything"));
        assert!(a.allows_topic(Perm::Write, "amq.topic", "bob.news"));
        assert!(!a.allows_topic(Perm::Write, "amq.topic", "alice.news"));
        assert!(a.allows_topic(Perm::Read, "amq.topic", "v.x"));
        // No topic permissions for an exchange: allowed.
        assert!(a.allows_topic(Perm::Write, "other", "anything"));
        let none = UserAccess::compile(&meta(), "bob", "elsewhere");
        assert!(!none.allows(Perm::Read, "q"));
    }

    #[test]
    fn braces_that_are_not_quantifiers_are_literals_as_in_pcre() {
        assert_eq!(pcre_braces("^{username}\\..*"), "^\\{username\\}\\..*");
        assert_eq!(pcre_braces("^a{2,3}b{4}c{1,}$"), "^a{2,3}b{4}c{1,}$");
        assert_eq!(pcre_braces("[{}]x"), "[{}]x");
        assert_eq!(pcre_braces("\\{x"), "\\{x");
        assert!(compile_regex("^{vhost}-{,2}").is_ok());
        assert!(compile_regex("a{").expect("literal").is_match("a{"));
    }

    #[test]
    fn invalid_expressions_are_refused_when_set() {
        assert!(validate_pattern("(").is_err());
        assert!(validate_pattern("^amq\\.gen-.*|^tmp-").is_ok());
        assert!(validate_pattern("").is_ok());
    }
}
