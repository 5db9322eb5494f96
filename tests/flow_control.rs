//! Clients that do not read their echoes, for every backend: the server stops reading
//! from them and holds a bounded share of their bytes (flow control), keeps serving a
//! client that does read, and gives every byte back in order once they read. The heavy
//! form (200 slow readers) is `#[ignore]`d:
//!
//! ```text
//! cargo test --release --test flow_control -- --ignored --test-threads 1
//! ```

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringbench::backends::CloseReason;
use ringbench::backends::Variant;

/// Tests that leave megabytes in the kernel's socket buffers of hundreds of connections
/// take turns. Side by side, twelve variants' 200 stuck clients (3–7 MiB queued in the
/// kernel each, alone) pushed loopback TCP past the host's `tcp_mem` (pressure from
/// 1.5 GiB here): the kernel dropped segments (2481 `TCPRcvQDrop`, 1832 retransmission
/// timeouts in one run, by `nstat`) and a read-back sat out backed-off retransmissions
/// past its 60 s timeout. One at a time, the same tests: no drops, no pressure.
static KERNEL_BUFFERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it poisoned nothing the next one needs.
    KERNEL_BUFFERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Clients that send `mib` MiB each without reading: the server stops reading from them,
/// its memory stays within about 1 MiB per connection, and every byte comes back in order
/// once they read.
fn slow_readers(backend: &Variant, clients: usize, mib: usize) {
    let _turn = one_at_a_time();
    let srv = ServerProc::spawn(backend, &["--workers", "1"], None);
    std::thread::sleep(Duration::from_millis(100));
    let rss0 = srv.rss_kib();
    let written = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for i in 0..clients {
        let s = connect_small_buffers(srv.addr);
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut w = s.try_clone().unwrap();
        let data = pattern(i, mib << 20);
        let counter = Arc::clone(&written);
        writers.push(std::thread::spawn(move || {
            for chunk in data.chunks(64 * 1024) {
                w.write_all(chunk).unwrap();
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        }));
        readers.push(s);
    }
    // Wait until the writers are stuck: TCP flow control is holding them back.
    let mut last = 0;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stable_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "writers never stalled");
        std::thread::sleep(Duration::from_millis(50));
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let total = (clients * (mib << 20)) as u64;
    assert!(last < total, "the server took all {total} bytes without anyone reading");
    let grown_kib = srv.rss_kib().saturating_sub(rss0);
    let allowed_kib = clients as u64 * 1024 + 16 * 1024;
    assert!(grown_kib <= allowed_kib, "server grew {grown_kib} KiB for {clients} slow readers (allowed {allowed_kib})");
    eprintln!(
        "{}: {clients} slow readers: server RSS grew {grown_kib} KiB ({} KiB each)",
        backend.name,
        grown_kib / clients as u64
    );
    let mut checkers = Vec::new();
    for (i, mut s) in readers.into_iter().enumerate() {
        checkers.push(std::thread::spawn(move || {
            expect_read(&mut s, &pattern(i, mib << 20));
            expect_eof(&mut s);
        }));
    }
    for t in checkers.into_iter().chain(writers) {
        t.join().unwrap();
    }
    let (status, _, rows, _) = srv.terminate();
    assert!(status.success());
    assert_eq!(rows.len(), clients);
    assert!(rows.iter().all(|r| r.bytes == (mib << 20) as u64 && r.close_reason == CloseReason::Eof));
}

/// `stuck` clients send until flow control stops them and never read their echoes, then
/// another client asks for echoes: it is served at once, whatever the stuck ones hold (with
/// io_uring, every buffer of the shared ring: each stuck client pins up to 17). Then the
/// stuck ones read, and every byte comes back in order.
fn stuck_readers_do_not_starve_others(backend: &Variant, stuck: usize) {
    const CYCLE_BYTES: usize = 64 * 1024;
    // Bounds the writing loop. The kernel alone may take this much from a client (the
    // server socket's receive buffer autotunes up to tcp_rmem's maximum), so reaching it
    // is not a failure; what the server itself holds is checked below.
    const MOST_BYTES: usize = 32 << 20;
    let _turn = one_at_a_time();
    let srv = ServerProc::spawn(backend, &["--workers", "1"], None);
    let mut socks: Vec<std::net::TcpStream> = (0..stuck).map(|_| connect_small_buffers(srv.addr)).collect();
    let patterns: Vec<Vec<u8>> = (0..stuck).map(|i| pattern(1000 + i, CYCLE_BYTES)).collect();
    let mut written = vec![0usize; stuck];
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    // Write to every socket until none takes more for half a second: the server stopped
    // reading from each (or the kernel's buffers between are full).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "the stuck clients' writes never stalled");
        let mut moved = false;
        for (i, s) in socks.iter_mut().enumerate() {
            while written[i] < MOST_BYTES {
                let at = written[i] % CYCLE_BYTES;
                match s.write(&patterns[i][at..]) {
                    Ok(n) => {
                        written[i] += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("stuck client {i}: write failed after {} bytes: {e}", written[i]),
                }
            }
        }
        if moved {
            still_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Flow control: what the server holds of each stuck client's bytes in its own memory
    // is what was written less what the kernel holds on the way (the client's unsent and
    // unread bytes, the server socket's unread and unsent ones). The kernel's share may be
    // large (receive buffers autotune up to tcp_rmem's maximum, 32 MiB on some hosts), the
    // server's must not be.
    let queues = kernel_queues(srv.addr, &socks);
    let mut most_held: (u64, String) = (0, String::new());
    for (i, (&w, k)) in written.iter().zip(&queues).enumerate() {
        let in_kernel = k.client_unsent + k.client_unread + k.server_unread + k.server_unsent;
        // The server's unacknowledged bytes may already sit in the client's receive queue,
        // counted twice (a page was, once): so this is at least 0. Bytes the server made up
        // are caught where every byte is read back below.
        let held = (w as u64).saturating_sub(in_kernel);
        if held >= most_held.0 {
            most_held = (held, format!("stuck client {i} wrote {w} bytes, the kernel holds {in_kernel} ({k:?})"));
        }
    }
    eprintln!(
        "{}: {stuck} stuck clients wrote {}..{} bytes each; the server held at most {} of one's",
        backend.name,
        written.iter().min().unwrap_or(&0),
        written.iter().max().unwrap_or(&0),
        most_held.0
    );
    // A client that reads: every echo comes, each within the read timeout.
    let mut good = connect(srv.addr);
    good.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for k in 0..20 {
        let p = pattern(k, 64);
        checked_write(&mut good, &p);
        let mut got = vec![0u8; p.len()];
        if let Err(e) = good.read_exact(&mut got) {
            panic!(
                "{}: request {k} of a reading client got no echo beside {stuck} clients that do not read: {e}",
                backend.name
            );
        }
        assert_eq!(got, p, "request {k}: wrong echo");
    }
    drop(good);
    // Now the stuck clients read: every byte they wrote comes back, in order.
    let checkers: Vec<_> = socks
        .into_iter()
        .zip(patterns)
        .zip(written)
        .map(|((mut s, p), n)| {
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut got = vec![0u8; n];
                s.read_exact(&mut got).unwrap_or_else(|e| panic!("{n} bytes to read back: {e}"));
                if let Some(at) = got.iter().enumerate().position(|(j, b)| *b != p[j % CYCLE_BYTES]) {
                    panic!("byte {at} of {n} differs");
                }
                expect_eof(&mut s);
            })
        })
        .collect();
    for t in checkers {
        t.join().unwrap();
    }
    let (status, _, rows, summary) = srv.terminate();
    assert!(status.success());
    assert_eq!(rows.len(), stuck + 1, "one row per connection");
    // Flow control held each stuck client to a bounded share of the server's memory. An
    // uncapped multishot receive (the cap is off, or the kernel predates it) stops only
    // when its cancel lands, by which time it may have taken much of the ring.
    let uncapped = summary["features"]["multishot_recv"] == "on" && summary["features"]["recv_cap"] == "off";
    let bound = if uncapped { ring_bytes(&summary) } else { SERVER_HOLDS_AT_MOST_BYTES };
    assert!(
        most_held.0 <= bound,
        "{}: the server holds {} bytes of one client that does not read, past {bound}: {}",
        backend.name,
        most_held.0,
        most_held.1
    );
    // Where there is a buffer ring, the test ran it dry (else it did not test this).
    if summary["features"]["bufring"].as_str().is_some_and(|b| b != "off") {
        assert!(summary["bufring_empty"].as_u64() > Some(0), "{}: the ring never ran dry: {summary}", backend.name);
        assert!(
            summary["own_buffer_receives"].as_u64() > Some(0),
            "{}: no receive fell back to its own buffer",
            backend.name
        );
    }
    assert!(
        rows.iter().all(|r| r.close_reason == CloseReason::Eof),
        "{:?}",
        rows.iter().find(|r| r.close_reason != CloseReason::Eof)
    );
}

/// The most of one client's bytes a server may hold in its own memory while the client
/// does not read: its flow-control bound (64 KiB of queued echo) plus what the receive
/// that crossed it may bring (up to one 64 KiB incremental buffer, or the 4 KiB own
/// fallback), with room to spare. A server without flow control holds megabytes.
const SERVER_HOLDS_AT_MOST_BYTES: u64 = 256 * 1024;

/// The bytes of a server's buffer ring, from its summary's `bufring` feature
/// ("2048x4096B"); 0 without one.
fn ring_bytes(summary: &serde_json::Value) -> u64 {
    let ring = summary["features"]["bufring"].as_str().unwrap_or("off");
    let Some((count, size)) = ring.trim_end_matches('B').split_once('x') else { return 0 };
    count.parse::<u64>().unwrap_or(0) * size.parse::<u64>().unwrap_or(0)
}

/// Bytes of one connection in the kernel's queues, in both its sockets.
#[derive(Debug, Default, Clone)]
struct KernelQueues {
    /// Written by the client, not yet sent (what it sent and the server's socket has not
    /// acknowledged is in `server_unread` already, or in the server: counting the client's
    /// unacknowledged bytes as well counted those twice).
    client_unsent: u64,
    /// Arrived at the client, not read by it.
    client_unread: u64,
    /// Arrived at the server's socket, not read by the server.
    server_unread: u64,
    /// Written by the server, not yet acknowledged by the client's socket (some of it may
    /// have arrived: /proc/net/tcp does not tell those apart).
    server_unsent: u64,
}

/// `ioctl(2)`: bytes of a TCP socket's send queue not yet sent (linux/sockios.h; the
/// libc crate does not have it).
const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// The kernel queues of every connection in `socks` (clients of the server at `addr`):
/// the client ends by ioctl, the server ends from /proc/net/tcp. The table is read in
/// pieces while other tests' sockets churn, so it is read again until every server end
/// is found.
fn kernel_queues(addr: std::net::SocketAddr, socks: &[std::net::TcpStream]) -> Vec<KernelQueues> {
    use std::os::fd::AsRawFd;
    let ioctl_bytes = |s: &std::net::TcpStream, req: libc::Ioctl| -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: the descriptor is an open socket borrowed for the call, and both
        // requests write one int into `n`, which lives across it.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), req, &mut n) };
        assert!(rc == 0, "ioctl on a client socket: {}", std::io::Error::last_os_error());
        n as u64
    };
    let ports: Vec<u16> = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let server_port = format!(":{:04X}", addr.port());
    let mut server_ends = std::collections::HashMap::new();
    for _ in 0..20 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        for line in table.lines().skip(1) {
            // sl local rem st tx_queue:rx_queue ...; addresses and queues in hex.
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || !f[1].ends_with(&server_port) {
                continue;
            }
            let Some(peer_port) = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) else {
                continue;
            };
            let Some((tx, rx)) = f[4].split_once(':') else { continue };
            let hex = |x: &str| u64::from_str_radix(x, 16).unwrap_or(0);
            server_ends.insert(peer_port, (hex(tx), hex(rx)));
        }
        if ports.iter().all(|p| server_ends.contains_key(p)) {
            break;
        }
    }
    socks
        .iter()
        .zip(&ports)
        .map(|(s, p)| {
            let &(server_unsent, server_unread) =
                server_ends.get(p).unwrap_or_else(|| panic!("the server's end of port {p} is not in /proc/net/tcp"));
            KernelQueues {
                client_unsent: ioctl_bytes(s, SIOCOUTQNSD),
                client_unread: ioctl_bytes(s, libc::FIONREAD),
                server_unread,
                server_unsent,
            }
        })
        .collect()
}

/// A client socket with a 64 KiB send buffer (set before connecting, so TCP autotuning
/// cannot grow it): what the kernel can hold of a client's unsent bytes stays small, so the
/// server's flow control is what stops the writer. Its receive buffer is left to the
/// kernel: it grows only as the client reads, so for one that does not read it stays at
/// `tcp_rmem`'s default. (Locked at 64 KiB too, about one loopback segment, a client that
/// finally read its echoes once sat for 38 minutes on a window the server saw as zero,
/// with nothing in its receive queue; the stalls seen since were the kernel dropping
/// under memory pressure, see [`KERNEL_BUFFERS`].)
fn connect_small_buffers(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_send_buffer_size(64 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s = std::net::TcpStream::from(sock);
    s.set_nodelay(true).unwrap();
    s
}

backend_suite!([epoll, uring, uring_no_bufring, uring_no_recv_cap, uring_bundle, uring_inc, uring_zc, uring_direct, uring_direct_zc_regbuf, uring_direct_inc_zc_regbuf, uring_direct_bundle_zc_regbuf, threads] {
    fn slow_readers_get_every_byte_with_bounded_memory(backend) {
        slow_readers(&backend, 20, 8);
    }

    fn stuck_readers_do_not_starve_a_reading_client(backend) {
        stuck_readers_do_not_starve_others(&backend, 200);
    }

    #[ignore = "heavy: 200 slow readers of 8 MiB each"]
    fn slow_readers_200(backend) {
        slow_readers(&backend, 200, 8);
    }
});
