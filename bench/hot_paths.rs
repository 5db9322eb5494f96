//! Hot paths measured without the network, each named for what it measures: the work a
//! change is likely to slow down per request or per connection.

mod common;

use std::net::SocketAddr;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ringbench::backends::io_uring::IoUring;
use ringbench::backends::uring::BufRing;
use ringbench::backends::{CloseReason, ConnMeter, ConnRecord};
use ringbench::client::payload::{fill_payload, nearest_rank};
use ringbench::results::encode_histogram;

/// One per-connection log row: building it and serialising it as CSV.
fn log_row(c: &mut Criterion) {
    let peer: SocketAddr = "127.0.0.1:45678".parse().unwrap();
    let mut meter = ConnMeter::new(peer, 17);
    for _ in 0..100 {
        meter.on_read(64, std::time::Instant::now());
    }
    let mut out = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(1 << 20));
    c.bench_function("log_row/finish_and_write_csv", |b| {
        b.iter(|| {
            let row: ConnRecord = meter.finish(0, CloseReason::Eof);
            out.serialize(&row).unwrap();
            if out.get_ref().len() > (1 << 20) - 256 {
                out = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(1 << 20));
            }
        })
    });
}

/// The client's per-request work besides the socket: the payload and its check.
fn payload(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_payload");
    for size in [64usize, 4096] {
        let mut a = vec![0u8; size];
        let b2 = {
            let mut v = vec![0u8; size];
            fill_payload(&mut v, 3, 9);
            v
        };
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("fill_and_verify", format!("{size}B")), &size, |b, _| {
            b.iter(|| {
                fill_payload(&mut a, 3, 9);
                assert!(a == b2);
            })
        });
    }
    g.finish();
}

/// Recording latencies: per request a Vec push; per thread a sort and percentiles; per
/// run the merged histogram and its serialisation into the JSON summary.
fn latency(c: &mut Criterion) {
    let samples: Vec<u64> = (0..100u64).map(|i| 20_000 + (i * 7919) % 50_000).collect();
    c.bench_function("latency/per_thread_100_requests", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(100);
            v.extend_from_slice(&samples);
            v.sort_unstable();
            (nearest_rank(&v, 0.5), nearest_rank(&v, 0.99))
        })
    });
    c.bench_function("latency/histogram_record_and_encode_1000", |b| {
        b.iter(|| {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            for _ in 0..10 {
                for &s in &samples {
                    h.record(s).unwrap();
                }
            }
            encode_histogram(&h)
        })
    });
}

/// Returning a buffer to an io_uring provided-buffer ring and publishing the tail: done
/// once per echoed receive by the uring backend.
fn bufring(c: &mut Criterion) {
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bufring/recycle_and_publish skipped: io_uring unavailable ({e})");
            return;
        }
    };
    let br = BufRing::new(&ring.submitter(), 2048, 4096, false).expect("register a buffer ring");
    let mut bid = 0u16;
    c.bench_function("bufring/recycle_and_publish", |b| {
        b.iter(|| {
            // A completion hands a buffer over; dropping the handle returns it.
            drop(br.take(bid));
            br.publish();
            bid = (bid + 1) & 2047;
        })
    });
}

criterion_group!(benches, log_row, payload, latency, bufring);
main_with_bundled_font!(benches);
