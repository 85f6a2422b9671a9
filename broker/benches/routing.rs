//! Topic routing benchmarks: `TopicTrie::route` for exact, `*` and `#` patterns over 10 to
//! 10,000 bindings, as a topic exchange routes each publish. Run with
//! `cargo bench -p warren-broker --bench routing`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use warren_broker::exchange::topic::TopicTrie;

/// `n` bindings shaped like a market-data fan-out: `stock.<i>.nyse` for each instrument,
/// plus a few wildcard subscribers.
fn trie(n: u32) -> TopicTrie<u32> {
    let mut t = TopicTrie::new();
    for i in 0..n {
        t.insert(&format!("stock.{i}.nyse"), i);
    }
    t.insert("stock.*.nasdaq", n);
    t.insert("stock.#", n + 1);
    t.insert("#.nyse", n + 2);
    t.insert("*.*.lse", n + 3);
    t
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic route");
    g.throughput(Throughput::Elements(1));
    for n in [10u32, 1_000, 10_000] {
        let t = trie(n);
        let mut out = Vec::with_capacity(16);
        // Matches one exact binding plus `stock.#` and `#.nyse`.
        let exact = format!("stock.{}.nyse", n / 2);
        g.bench_with_input(BenchmarkId::new("exact+hash", n), &exact, |b, key| {
            b.iter(|| {
                out.clear();
                t.route(black_box(key), &mut out);
                black_box(out.len())
            })
        });
        // Matches `stock.*.nasdaq` and `stock.#` only.
        g.bench_with_input(
            BenchmarkId::new("star+hash", n),
            &"stock.abc.nasdaq",
            |b, key| {
                b.iter(|| {
                    out.clear();
                    t.route(black_box(key), &mut out);
                    black_box(out.len())
                })
            },
        );
        // Matches nothing but `#` patterns must still be explored.
        g.bench_with_input(BenchmarkId::new("no match", n), &"bond.x.y.z", |b, key| {
            b.iter(|| {
                out.clear();
                t.route(black_box(key), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
