//! The reference peers (examples/tokio_echo.rs, examples/monoio_echo.rs) are echo servers
//! a sweep measures beside ringbench's own: each must echo every byte of every workload,
//! or a comparison with it means nothing.
//!
//! `cargo test --all-targets` builds the examples before any test runs; a test run without
//! them (`cargo test --test peers`) builds them first.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringbench::client::{self, ClientConfig, Engine, Workload};

/// The example's binary beside this test's profile directory, built if it is missing.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--example", name]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    bin
}

struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str) -> Peer {
    // A port that was free a moment ago; the peers bind 127.0.0.1:PORT themselves.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(example(name))
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let mut peer = Peer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(peer.addr).is_err() {
        assert!(peer.child.try_wait().unwrap().is_none(), "{name} exited before it listened");
        assert!(Instant::now() < deadline, "{name} did not listen on {} within 10 s", peer.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
    peer
}

/// Every workload the event engine runs, and the seed's client, against one peer.
fn every_workload_echoes(name: &str) {
    let peer = start(name);
    for (w, engine) in [
        ("rr", Engine::Threads),
        ("rr", Engine::Epoll),
        ("crr", Engine::Epoll),
        ("pipeline:4", Engine::Epoll),
        ("stream", Engine::Epoll),
        ("idle:30", Engine::Epoll),
    ] {
        let mut c = ClientConfig::new(peer.addr, 8, 20, 512);
        c.label = "test".into();
        c.window = 8 * 1024;
        c.engine = engine;
        c.workload = Workload::parse(w).unwrap();
        c.timeout = Duration::from_secs(10);
        let r = client::run(&c).unwrap_or_else(|e| panic!("{name}, {w}: {e}"));
        assert!(r.ok(), "{name}, {w} with the {} engine: {:?}", engine.name(), r.summary.first_error);
        assert_eq!(r.summary.workload, w);
        let idle = c.workload.idle() as u64;
        assert_eq!(r.summary.requests, 8 * 20 + idle, "{name}, {w}");
        assert_eq!(r.summary.bytes, (8 * 20 + idle) * 512, "{name}, {w}: every byte back");
    }
}

#[test]
fn the_tokio_peer_echoes_every_workload() {
    every_workload_echoes("tokio_echo");
}

#[test]
fn the_monoio_peer_echoes_every_workload() {
    every_workload_echoes("monoio_echo");
}
