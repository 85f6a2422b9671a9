//! Codec benchmarks: decoding and encoding the frames on every message's path — a publish
//! (method, content header, body) coming in and a delivery (`basic.deliver`, header, body)
//! going out — for a 16-byte and a 4 KiB body. Run with `cargo bench -p warren-amqp`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use warren_amqp::frame::{
    decode_frame, encode_ack, encode_content, encode_deliver, encode_method, Frame,
};
use warren_amqp::{basic, AMQPClass, Properties};

const FRAME_MAX: u32 = 131_072;

fn publish_method() -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "amq.direct".into(),
        routing_key: "orders.created".into(),
        mandatory: false,
        immediate: false,
    }))
}

fn properties() -> Properties {
    Properties::encode(
        &basic::AMQPProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
    )
}

/// The bytes of one published message: method, header and body frames.
fn publish_bytes(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_method(&mut out, 1, &publish_method()).expect("encode publish");
    encode_content(&mut out, 1, properties().raw(), body, FRAME_MAX);
    out
}

/// The bytes of one delivered message: deliver, header and body frames.
fn deliver_bytes(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_deliver(
        &mut out,
        1,
        "amq.ctag-Xk2Vw8yJ0Jq3",
        123_456,
        false,
        "amq.direct",
        "orders.created",
    );
    encode_content(&mut out, 1, properties().raw(), body, FRAME_MAX);
    out
}

fn decode_all(mut buf: BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = decode_frame(&mut buf, FRAME_MAX).expect("valid frames") {
        n += matches!(frame, Frame::Body(..)) as usize;
        black_box(frame);
    }
    n
}

fn bench_codec(c: &mut Criterion) {
    for size in [16usize, 4096] {
        let body = vec![b'x'; size];
        let mut g = c.benchmark_group(format!("codec/{size}B"));
        g.throughput(Throughput::Elements(1));

        let publish = publish_bytes(&body);
        g.bench_function("decode publish", |b| {
            b.iter_batched(
                || publish.clone(),
                |buf| black_box(decode_all(buf)),
                BatchSize::SmallInput,
            )
        });
        let deliver = deliver_bytes(&body);
        g.bench_function("decode deliver", |b| {
            b.iter_batched(
                || deliver.clone(),
                |buf| black_box(decode_all(buf)),
                BatchSize::SmallInput,
            )
        });

        let method = publish_method();
        let props = properties();
        let mut out = BytesMut::with_capacity(2 * size + 1024);
        g.bench_function("encode publish", |b| {
            b.iter(|| {
                out.clear();
                encode_method(&mut out, 1, black_box(&method)).expect("encode publish");
                encode_content(&mut out, 1, props.raw(), black_box(&body), FRAME_MAX);
                black_box(out.len())
            })
        });
        g.bench_function("encode deliver", |b| {
            b.iter(|| {
                out.clear();
                encode_deliver(
                    &mut out,
                    1,
                    black_box("amq.ctag-Xk2Vw8yJ0Jq3"),
                    black_box(123_456),
                    false,
                    "amq.direct",
                    "orders.created",
                );
                encode_content(&mut out, 1, props.raw(), black_box(&body), FRAME_MAX);
                black_box(out.len())
            })
        });
        g.finish();
    }

    let mut g = c.benchmark_group("codec/ack");
    g.throughput(Throughput::Elements(1));
    let mut out = BytesMut::with_capacity(64);
    g.bench_function("encode ack", |b| {
        b.iter(|| {
            out.clear();
            encode_ack(&mut out, 1, black_box(42), true);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
