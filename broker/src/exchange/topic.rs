//! Topic-exchange routing: the bindings of one topic exchange kept as a trie of binding-key
//! words, so a publish walks the trie once instead of testing every binding.
//!
//! Keys follow RabbitMQ's rules. A key is split on `.` into words; in a binding key the word
//! `*` matches exactly one routing-key word and `#` matches zero or more; any other word
//! (including `a#b` or an empty word) matches only itself. Empty words are words (`a..b` has
//! three, `a.` has two), but the empty key has no words at all: `""` is matched by `""`, `#`
//! and `#.#`, and not by `*`.
//!
//! Routing memoises the `#` states it has explored, so keys like `#.#.#.#` cost at most
//! (trie nodes × routing-key words) steps instead of growing combinatorially.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

type NodeId = usize;

/// The root node: the binding key with no words.
const ROOT: NodeId = 0;

/// Splits a key into words the way RabbitMQ does: the empty key has no words, every other key
/// has one more word than it has dots.
fn split_words(key: &str) -> impl Iterator<Item = &str> {
    (!key.is_empty())
        .then(|| key.split('.'))
        .into_iter()
        .flatten()
}

/// The kind of trie edge a binding-key word follows.
enum Edge<'a> {
    Word(&'a str),
    Star,
    Hash,
}

fn edge(word: &str) -> Edge<'_> {
    match word {
        "*" => Edge::Star,
        "#" => Edge::Hash,
        w => Edge::Word(w),
    }
}

#[derive(Debug, Clone)]
struct Node<T> {
    /// Children by literal word. `*` and `#` never appear here: they have their own fields so
    /// that a routing-key word spelled `*` or `#` cannot reach a wildcard node twice.
    words: HashMap<Box<str>, NodeId>,
    star: Option<NodeId>,
    hash: Option<NodeId>,
    /// Destinations whose binding key ends at this node.
    dests: HashSet<T>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            dests: HashSet::new(),
        }
    }

    fn is_unused(&self) -> bool {
        self.dests.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn child(&self, word: &str) -> Option<NodeId> {
        match edge(word) {
            Edge::Word(w) => self.words.get(w).copied(),
            Edge::Star => self.star,
            Edge::Hash => self.hash,
        }
    }
}

/// Bindings of a topic exchange, keyed by binding pattern words.
///
/// Nodes live in an arena indexed by `NodeId`; nodes freed by [`TopicTrie::remove`] are
/// reused. Every node other than the root holds a destination or has a child, so removing
/// every binding leaves only the root.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    nodes: Vec<Node<T>>,
    free: Vec<NodeId>,
    len: usize,
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        TopicTrie {
            nodes: vec![Node::new()],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Adds a binding; returns false if (pattern, dest) was already there.
    pub fn insert(&mut self, binding_key: &str, dest: T) -> bool {
        let mut node = ROOT;
        for word in split_words(binding_key) {
            node = match self.nodes[node].child(word) {
                Some(child) => child,
                None => {
                    let child = self.alloc();
                    let parent = &mut self.nodes[node];
                    match edge(word) {
                        Edge::Word(w) => {
                            parent.words.insert(w.into(), child);
                        }
                        Edge::Star => parent.star = Some(child),
                        Edge::Hash => parent.hash = Some(child),
                    }
                    child
                }
            };
        }
        let added = self.nodes[node].dests.insert(dest);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes a binding; returns true if it was there. Prunes empty nodes.
    pub fn remove(&mut self, binding_key: &str, dest: &T) -> bool {
        // The (parent, word) edges walked, so that emptied nodes can be unlinked bottom-up.
        let mut path: Vec<(NodeId, &str)> = Vec::new();
        let mut node = ROOT;
        for word in split_words(binding_key) {
            match self.nodes[node].child(word) {
                Some(child) => {
                    path.push((node, word));
                    node = child;
                }
                None => return false,
            }
        }
        if !self.nodes[node].dests.remove(dest) {
            return false;
        }
        self.len -= 1;
        if self.len == 0 {
            // Nothing left: drop the arena rather than keep its capacity around.
            *self = Self::new();
            return true;
        }
        while let Some((parent, word)) = path.pop() {
            if !self.nodes[node].is_unused() {
                break;
            }
            let p = &mut self.nodes[parent];
            match edge(word) {
                Edge::Word(w) => {
                    p.words.remove(w);
                }
                Edge::Star => p.star = None,
                Edge::Hash => p.hash = None,
            }
            self.free.push(node);
            node = parent;
        }
        true
    }

    /// Appends every destination whose pattern matches `routing_key` to `out`, each
    /// destination at most once per call (even when several patterns match it).
    pub fn route(&self, routing_key: &str, out: &mut Vec<T>) {
        let words: Vec<&str> = split_words(routing_key).collect();
        let n = words.len();
        // A state is (node, number of routing-key words consumed). Without `#` every node is
        // reached at one position at most, because each edge consumes exactly one word.
        let mut stack: Vec<(NodeId, usize)> = vec![(ROOT, 0)];
        // For each `#` node entered so far, the lowest position it was entered at. A `#`
        // entered at `p` is explored at every position `p..=n`, so a later entry at `q >= p`
        // adds nothing; this is what keeps `#.#.#` patterns from blowing up.
        let mut hash_from: HashMap<NodeId, usize> = HashMap::new();
        // Nodes whose bindings match. By the above, each appears at most once.
        let mut matched: Vec<NodeId> = Vec::new();

        while let Some((id, pos)) = stack.pop() {
            let node = &self.nodes[id];
            match words.get(pos) {
                None => {
                    if !node.dests.is_empty() {
                        matched.push(id);
                    }
                }
                Some(&word) => {
                    if let Some(child) = node.words.get(word) {
                        stack.push((*child, pos + 1));
                    }
                    if let Some(child) = node.star {
                        stack.push((child, pos + 1));
                    }
                }
            }
            if let Some(hash) = node.hash {
                let explored_from = hash_from.get(&hash).copied().unwrap_or(n + 1);
                if pos < explored_from {
                    hash_from.insert(hash, pos);
                    stack.extend((pos..explored_from).map(|q| (hash, q)));
                }
            }
        }

        match matched.as_slice() {
            [] => {}
            // One node's set holds each destination once already.
            [only] => out.extend(self.nodes[*only].dests.iter().cloned()),
            several => {
                let mut seen: HashSet<&T> = HashSet::new();
                for id in several {
                    for dest in &self.nodes[*id].dests {
                        if seen.insert(dest) {
                            out.push(dest.clone());
                        }
                    }
                }
            }
        }
    }

    /// True when the trie holds no binding.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of (pattern, dest) bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::new());
                self.nodes.len() - 1
            }
        }
    }

    /// Nodes in use, the root included.
    #[cfg(test)]
    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn routed<T: Clone + Eq + Hash + Ord>(trie: &TopicTrie<T>, key: &str) -> Vec<T> {
        let mut out = Vec::new();
        trie.route(key, &mut out);
        let unique: BTreeSet<T> = out.iter().cloned().collect();
        assert_eq!(unique.len(), out.len(), "duplicate destination for {key:?}");
        unique.into_iter().collect()
    }

    fn trie_of(bindings: &[(&str, &'static str)]) -> TopicTrie<&'static str> {
        let mut trie = TopicTrie::new();
        for (key, dest) in bindings {
            trie.insert(key, *dest);
        }
        trie
    }

    fn sorted(dests: &[&'static str]) -> Vec<&'static str> {
        let mut v = dests.to_vec();
        v.sort_unstable();
        v
    }

    /// The bindings of RabbitMQ's own topic-matching test.
    const RABBIT_BINDINGS: [(&str, &str); 26] = [
        ("a.b.c", "t1"),
        ("a.*.c", "t2"),
        ("a.#.b", "t3"),
        ("a.b.b.c", "t4"),
        ("#", "t5"),
        ("#.#", "t6"),
        ("#.b", "t7"),
        ("*.*", "t8"),
        ("a.*", "t9"),
        ("*.b.c", "t10"),
        ("a.#", "t11"),
        ("a.#.#", "t12"),
        ("b.b.c", "t13"),
        ("a.b.b", "t14"),
        ("a.b", "t15"),
        ("b.c", "t16"),
        ("", "t17"),
        ("*.*.*", "t18"),
        ("vodka.martini", "t19"),
        ("a.b.c", "t20"),
        ("*.#", "t21"),
        ("#.*.#", "t22"),
        ("*.#.#", "t23"),
        ("#.#.#", "t24"),
        ("*", "t25"),
        ("#.b.#", "t26"),
    ];

    #[test]
    fn rabbitmq_topic_matching_table() {
        let mut trie = trie_of(&RABBIT_BINDINGS);
        assert_eq!(trie.len(), 26);
        let expected: [(&str, &[&str]); 11] = [
            (
                "a.b.c",
                &[
                    "t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22", "t23",
                    "t24", "t26",
                ],
            ),
            (
                "a.b",
                &[
                    "t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22", "t23",
                    "t24", "t26",
                ],
            ),
            (
                "a.b.b",
                &[
                    "t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23", "t24",
                    "t26",
                ],
            ),
            ("", &["t5", "t6", "t17", "t24"]),
            (
                "b.c.c",
                &["t5", "t6", "t18", "t21", "t22", "t23", "t24", "t26"],
            ),
            (
                "a.a.a.a.a",
                &["t5", "t6", "t11", "t12", "t21", "t22", "t23", "t24"],
            ),
            ("vodka.gin", &["t5", "t6", "t8", "t21", "t22", "t23", "t24"]),
            (
                "vodka.martini",
                &["t5", "t6", "t8", "t19", "t21", "t22", "t23", "t24"],
            ),
            (
                "b.b.c",
                &[
                    "t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t24", "t26",
                ],
            ),
            (
                "nothing.here.at.all",
                &["t5", "t6", "t21", "t22", "t23", "t24"],
            ),
            ("oneword", &["t5", "t6", "t21", "t22", "t23", "t24", "t25"]),
        ];
        for (key, dests) in expected {
            assert_eq!(routed(&trie, key), sorted(dests), "routing key {key:?}");
        }

        // RabbitMQ's test then removes t1, t5, t11, t19 and t21 and checks again.
        for (key, dest) in [
            ("a.b.c", "t1"),
            ("#", "t5"),
            ("a.#", "t11"),
            ("vodka.martini", "t19"),
            ("*.#", "t21"),
        ] {
            assert!(trie.remove(key, &dest));
        }
        assert_eq!(trie.len(), 21);
        let expected: [(&str, &[&str]); 11] = [
            (
                "a.b.c",
                &[
                    "t2", "t6", "t10", "t12", "t18", "t20", "t22", "t23", "t24", "t26",
                ],
            ),
            (
                "a.b",
                &[
                    "t3", "t6", "t7", "t8", "t9", "t12", "t15", "t22", "t23", "t24", "t26",
                ],
            ),
            (
                "a.b.b",
                &[
                    "t3", "t6", "t7", "t12", "t14", "t18", "t22", "t23", "t24", "t26",
                ],
            ),
            ("", &["t6", "t17", "t24"]),
            ("b.c.c", &["t6", "t18", "t22", "t23", "t24", "t26"]),
            ("a.a.a.a.a", &["t6", "t12", "t22", "t23", "t24"]),
            ("vodka.gin", &["t6", "t8", "t22", "t23", "t24"]),
            ("vodka.martini", &["t6", "t8", "t22", "t23", "t24"]),
            (
                "b.b.c",
                &["t6", "t10", "t13", "t18", "t22", "t23", "t24", "t26"],
            ),
            ("nothing.here.at.all", &["t6", "t22", "t23", "t24"]),
            ("oneword", &["t6", "t22", "t23", "t24", "t25"]),
        ];
        for (key, dests) in expected {
            assert_eq!(routed(&trie, key), sorted(dests), "routing key {key:?}");
        }

        // Removing everything else leaves nothing routable and an empty trie.
        for (key, dest) in RABBIT_BINDINGS {
            trie.remove(key, &dest);
        }
        assert!(trie.is_empty());
        assert_eq!(trie.live_nodes(), 1);
        for key in ["a.b.c", "b.b.c", ""] {
            assert!(routed(&trie, key).is_empty());
        }
    }

    #[test]
    fn empty_routing_key_has_no_words() {
        let trie = trie_of(&[
            ("", "empty"),
            ("#", "hash"),
            ("#.#", "hash2"),
            ("*", "star"),
            ("*.#", "star_hash"),
            ("#.*", "hash_star"),
            (".", "dot"),
        ]);
        assert_eq!(routed(&trie, ""), vec!["empty", "hash", "hash2"]);
        // "." is two empty words.
        assert_eq!(
            routed(&trie, "."),
            vec!["dot", "hash", "hash2", "hash_star", "star_hash"]
        );
    }

    #[test]
    fn empty_words_are_words() {
        let trie = trie_of(&[
            ("a..b", "exact"),
            ("a.*.b", "star"),
            ("a.#.b", "hash"),
            ("a.", "trailing"),
            ("a.*", "a_star"),
            (".a", "leading"),
            ("*.a", "star_a"),
            ("a.b", "ab"),
        ]);
        assert_eq!(routed(&trie, "a..b"), vec!["exact", "hash", "star"]);
        assert_eq!(routed(&trie, "a.b"), vec!["a_star", "ab", "hash"]);
        assert_eq!(routed(&trie, "a."), vec!["a_star", "trailing"]);
        assert_eq!(routed(&trie, ".a"), vec!["leading", "star_a"]);
        assert!(routed(&trie, "a").is_empty());
        assert_eq!(routed(&trie, "a...b"), vec!["hash"]);
    }

    #[test]
    fn wildcards_only_as_whole_words() {
        let trie = trie_of(&[("a#b", "lit_hash"), ("a*", "lit_star"), ("#a", "hash_lit")]);
        assert_eq!(routed(&trie, "a#b"), vec!["lit_hash"]);
        assert!(routed(&trie, "ab").is_empty());
        assert!(routed(&trie, "axb").is_empty());
        assert_eq!(routed(&trie, "a*"), vec!["lit_star"]);
        assert!(routed(&trie, "ax").is_empty());
        assert_eq!(routed(&trie, "#a"), vec!["hash_lit"]);
        assert!(routed(&trie, "b.a").is_empty());
    }

    #[test]
    fn wildcard_words_in_routing_keys_are_literal() {
        let trie = trie_of(&[
            ("*", "star"),
            ("#", "hash"),
            ("a", "a"),
            ("a.#.b", "a_hash_b"),
            ("a.*.b", "a_star_b"),
        ]);
        assert_eq!(routed(&trie, "*"), vec!["hash", "star"]);
        assert_eq!(routed(&trie, "#"), vec!["hash", "star"]);
        assert_eq!(routed(&trie, "a.#.b"), vec!["a_hash_b", "a_star_b", "hash"]);
        assert_eq!(routed(&trie, "a.*.b"), vec!["a_hash_b", "a_star_b", "hash"]);
        // A literal "#" in a routing key is one word, not "zero or more".
        let only_hash_word = trie_of(&[("a.b", "ab")]);
        assert!(routed(&only_hash_word, "a.#.b").is_empty());
        assert!(routed(&only_hash_word, "a.#").is_empty());
    }

    #[test]
    fn hash_positions() {
        let trie = trie_of(&[
            ("#.z", "start"),
            ("a.#.z", "middle"),
            ("a.#", "end"),
            ("#.#", "double"),
            ("a.#.#.z", "double_middle"),
            ("#.a.#", "around"),
        ]);
        assert_eq!(
            routed(&trie, "a.z"),
            vec![
                "around",
                "double",
                "double_middle",
                "end",
                "middle",
                "start"
            ]
        );
        assert_eq!(
            routed(&trie, "a.b.c.z"),
            vec![
                "around",
                "double",
                "double_middle",
                "end",
                "middle",
                "start"
            ]
        );
        assert_eq!(routed(&trie, "z"), vec!["double", "start"]);
        assert_eq!(routed(&trie, "a"), vec!["around", "double", "end"]);
        assert_eq!(routed(&trie, "b.a.c"), vec!["around", "double"]);
        assert_eq!(routed(&trie, "b"), vec!["double"]);
    }

    #[test]
    fn insert_and_remove_bookkeeping() {
        let mut trie: TopicTrie<u32> = TopicTrie::default();
        assert!(trie.is_empty());
        assert!(trie.insert("a.b", 1));
        assert!(!trie.insert("a.b", 1));
        assert!(trie.insert("a.b", 2));
        assert!(trie.insert("a.*", 1));
        assert!(trie.insert("", 1));
        assert_eq!(trie.len(), 4);
        assert!(!trie.is_empty());

        assert!(!trie.remove("a.b", &3));
        assert!(!trie.remove("a.c", &1));
        assert!(!trie.remove("a.b.c", &1));
        assert!(!trie.remove("a", &1));
        assert!(!trie.remove("a.#", &1));
        assert_eq!(trie.len(), 4);

        assert!(trie.remove("a.b", &1));
        assert!(!trie.remove("a.b", &1));
        assert_eq!(routed(&trie, "a.b"), vec![1, 2]);
        assert!(trie.remove("a.b", &2));
        assert_eq!(routed(&trie, "a.b"), vec![1]);
        assert!(trie.remove("a.*", &1));
        assert!(routed(&trie, "a.b").is_empty());
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.live_nodes(), 1, "only the root holds the \"\" binding");
        assert!(trie.remove("", &1));
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut trie = TopicTrie::new();
        trie.insert("a.b.c.d", 1);
        trie.insert("a.b", 2);
        trie.insert("a.*.#", 3);
        assert_eq!(trie.live_nodes(), 1 + 4 + 2);
        assert!(trie.remove("a.b.c.d", &1));
        // c and d are gone; a and b remain for "a.b".
        assert_eq!(trie.live_nodes(), 1 + 2 + 2);
        assert_eq!(routed(&trie, "a.b"), vec![2, 3]);
        assert!(trie.remove("a.*.#", &3));
        assert_eq!(trie.live_nodes(), 1 + 2);
        // Freed nodes are reused.
        trie.insert("x.y.z", 4);
        assert_eq!(trie.nodes.len(), 1 + 4 + 2);
        assert_eq!(routed(&trie, "x.y.z"), vec![4]);
        assert_eq!(routed(&trie, "a.b"), vec![2]);
    }

    #[test]
    fn destination_appears_once_per_route() {
        let mut trie = TopicTrie::new();
        for key in ["#", "#.#", "a.#", "*.b", "a.b", "#.b.#", "a.*"] {
            trie.insert(key, "q");
        }
        trie.insert("a.b", "other");
        let mut out = vec!["already-there", "q"];
        trie.route("a.b", &mut out);
        // Appends after what was there; dedupes only within this call.
        assert_eq!(out.len(), 4);
        assert_eq!(&out[..2], &["already-there", "q"]);
        let appended: BTreeSet<_> = out[2..].iter().copied().collect();
        assert_eq!(appended, BTreeSet::from(["other", "q"]));
    }

    #[test]
    fn many_hashes_do_not_blow_up() {
        let mut trie = TopicTrie::new();
        let hashes = vec!["#"; 40].join(".");
        trie.insert(&format!("{hashes}.x"), 1);
        trie.insert(&hashes, 2);
        trie.insert(&format!("#.a.{hashes}.a.#.y"), 3);
        let key = vec!["a"; 127].join(".");
        // Unmemoised, the first pattern alone would try C(166, 40) ways to split the key.
        assert_eq!(routed(&trie, &key), vec![2]);
        assert_eq!(routed(&trie, &format!("{key}.x")), vec![1, 2]);
        assert_eq!(routed(&trie, &format!("{key}.y")), vec![2, 3]);
    }

    /// Deterministic xorshift64 for the cross-check.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn key(&mut self, alphabet: &[&str], max_words: usize) -> String {
            let n = self.below(max_words + 1);
            (0..n)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect::<Vec<_>>()
                .join(".")
        }
    }

    /// Straightforward recursive matcher over word lists, written independently of the trie.
    fn reference_match(pattern: &str, key: &str) -> bool {
        fn split(s: &str) -> Vec<&str> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('.').collect()
            }
        }
        fn go(p: &[&str], k: &[&str]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
                Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
                Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
            }
        }
        go(&split(pattern), &split(key))
    }

    #[test]
    fn reference_matcher_agrees_with_rabbitmq_examples() {
        assert!(reference_match("", ""));
        assert!(reference_match("#", ""));
        assert!(!reference_match("*", ""));
        assert!(reference_match("a.#.b", "a.b"));
        assert!(reference_match("#.*.#", "x"));
        assert!(!reference_match("#.*.#", ""));
    }

    #[test]
    fn cross_check_against_reference_matcher() {
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", "", "*", "#", "c"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _round in 0..300 {
            let mut trie = TopicTrie::new();
            let mut bindings: Vec<(String, usize)> = Vec::new();
            for _ in 0..rng.below(25) {
                let pattern = rng.key(&pattern_words, 6);
                let dest = rng.below(6);
                let fresh = !bindings.contains(&(pattern.clone(), dest));
                assert_eq!(trie.insert(&pattern, dest), fresh);
                if fresh {
                    bindings.push((pattern, dest));
                }
            }
            // Drop some bindings again so that pruned tries get routed through too.
            for _ in 0..rng.below(6) {
                if bindings.is_empty() {
                    break;
                }
                let (pattern, dest) = bindings.swap_remove(rng.below(bindings.len()));
                assert!(trie.remove(&pattern, &dest));
                assert!(!trie.remove(&pattern, &dest));
            }
            assert_eq!(trie.len(), bindings.len());
            for _ in 0..30 {
                let key = rng.key(&key_words, 7);
                let expected: BTreeSet<usize> = bindings
                    .iter()
                    .filter(|(pattern, _)| reference_match(pattern, &key))
                    .map(|(_, dest)| *dest)
                    .collect();
                let got = routed(&trie, &key);
                assert_eq!(
                    got,
                    expected.into_iter().collect::<Vec<_>>(),
                    "key {key:?}, bindings {bindings:?}"
                );
            }
        }
    }
}
