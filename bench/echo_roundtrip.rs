//! `echo_roundtrip`: verified 64 B and 4 KiB round trips through each backend, so a change
//! that slows a backend down shows up as a regression against a saved baseline.
//!
//! Each backend (and each io_uring feature switched off) gets one in-process server on
//! port 0 with one worker and the matrix's defaults. As in the matrix, the server's threads
//! run on the first CPU and the client threads on the last (with 2+ CPUs): left to the
//! scheduler, a single connection's round trip swings tenfold between runs depending on
//! whether both ends happen to share a CPU. Blocking client threads, connected
//! once per parameter set, each do a fixed batch of round trips per iteration; only the
//! batch is timed (`iter_custom`). Every echo is compared with what was sent, so a broken
//! backend fails the bench instead of looking fast.
//!
//! ```text
//! cargo bench --bench echo_roundtrip -- --save-baseline main
//! cargo bench --bench echo_roundtrip -- --baseline main
//! ```

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ringbench::backends::{self, ServerHandle, Variant};
use ringbench::client::fill_payload;

/// Round trips each connection makes per timed iteration.
const ROUND_TRIPS_PER_CONN: u64 = 16;
const CONNECTIONS: [usize; 3] = [1, 64, 512];
const SIZES_BYTES: [usize; 2] = [64, 4096];
const VARIANTS: [&str; 5] = ["epoll", "uring", "uring-no-multishot", "uring-no-bufring", "uring-no-defer-taskrun"];

/// (server CPUs, client CPUs); empty when there is only one CPU.
fn pinning() -> (Vec<usize>, Vec<usize>) {
    ringbench::matrix::default_pinning()
}

fn start(v: &Variant) -> ServerHandle {
    // Threads inherit the affinity of the thread that creates them: the server's are
    // created while this thread is on the server CPUs.
    let (server_cpus, _) = pinning();
    let all = backends::sys::affinity().unwrap_or_default();
    if !server_cpus.is_empty() {
        backends::sys::set_affinity(&server_cpus).expect("pin to the server CPUs");
    }
    let mut cfg = v.config();
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.workers = 1;
    let server = backends::start(v.backend, cfg).unwrap_or_else(|e| panic!("{} server: {e}", v.name));
    if !all.is_empty() {
        backends::sys::set_affinity(&all).expect("unpin");
    }
    server
}

/// Client threads holding one connection each, driven batch by batch.
struct Pool {
    orders: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(addr: SocketAddr, conns: usize, size: usize) -> Pool {
        let (done_tx, done) = mpsc::channel();
        let mut orders = Vec::new();
        let mut threads = Vec::new();
        let (_, client_cpus) = pinning();
        for t in 0..conns {
            let (tx, rx) = mpsc::channel::<u64>();
            let done_tx = done_tx.clone();
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let cpus = client_cpus.clone();
            let h = std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    if !cpus.is_empty() {
                        backends::sys::set_affinity(&cpus).expect("pin to the client CPUs");
                    }
                    let mut sent = vec![0u8; size];
                    let mut got = vec![0u8; size];
                    let mut r = 0u64;
                    for batches in rx {
                        for _ in 0..batches * ROUND_TRIPS_PER_CONN {
                            fill_payload(&mut sent[..8.min(size)], t, r);
                            r += 1;
                            s.write_all(&sent).expect("write");
                            s.read_exact(&mut got).expect("read");
                            assert!(sent == got, "echo mismatch on connection {t}");
                        }
                        if done_tx.send(()).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawn client thread");
            orders.push(tx);
            threads.push(h);
        }
        Pool { orders, done, threads }
    }

    /// Runs `batches` batches on every connection at once; returns the wall time.
    fn run(&self, batches: u64) -> Duration {
        let t = Instant::now();
        for o in &self.orders {
            o.send(batches).expect("client thread alive");
        }
        for _ in &self.orders {
            self.done.recv().expect("client thread finished its batch");
        }
        t.elapsed()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.orders.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn echo_roundtrip(c: &mut Criterion) {
    let mut group = c.benchmark_group("echo_roundtrip");
    for name in VARIANTS {
        let v = Variant::parse(name).expect("known variant");
        let server = start(&v);
        for conns in CONNECTIONS {
            for size in SIZES_BYTES {
                let pool = Pool::new(server.local_addr(), conns, size);
                group.throughput(Throughput::Elements(conns as u64 * ROUND_TRIPS_PER_CONN));
                let id = BenchmarkId::new(name, format!("{conns}conns/{size}B"));
                group.bench_function(id, |b| b.iter_custom(|iters| pool.run(iters)));
            }
        }
        let summary = server.stop().expect("server stops");
        assert_eq!(summary.log_rows, summary.connections, "{name}: one log row per connection");
    }
    group.finish();
}

criterion_group!(benches, echo_roundtrip);
main_with_bundled_font!(benches);
