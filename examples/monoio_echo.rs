//! A monoio echo server, as the io_uring reference peer for the sweep: what a Rust user
//! who picks io_uring would write with the runtime built on it, to be measured beside
//! ringbench's backends.
//!
//! ```text
//! cargo build --release --example monoio_echo
//! ./run_matrix.sh --target monoio='target/release/examples/monoio_echo --port {port}'
//! ```
//!
//! One runtime thread (monoio is thread-per-core; `--threads N` starts N, each with its own
//! ring and its own `SO_REUSEPORT` listener), io_uring only (no epoll fallback is built),
//! `TCP_NODELAY`, and the runtime's usual owned-buffer loop: read into a 4 KiB buffer,
//! write all of it, again. Ends on SIGINT/SIGTERM by their default action: it has nothing
//! to flush.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

const BUF_BYTES: usize = 4096;
/// Submission queue entries per ring (monoio's default is 1024).
const RING_ENTRIES: u32 = 4096;
/// What we ask `listen` for, as ringbench's own servers do; the kernel caps it at
/// `net.core.somaxconn`.
const BACKLOG: i32 = 65_535;

struct Args {
    port: u16,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { port: 8000, threads: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => a.port = value.parse().map_err(|_| format!("--port: '{value}' is not a port"))?,
            "--threads" => {
                a.threads =
                    value.parse().ok().filter(|&n| n > 0).ok_or(format!("--threads: '{value}' must be 1 or more"))?
            }
            _ => return Err(format!("unknown flag {flag} (expected --port N, --threads N)")),
        }
    }
    Ok(a)
}

async fn echo(mut s: TcpStream) {
    let mut buf = Vec::with_capacity(BUF_BYTES);
    loop {
        // The buffer is the kernel's while the read is in flight and comes back with it.
        let (res, b) = s.read(buf).await;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let (res, mut b) = s.write_all(b).await;
                if res.is_err() {
                    return;
                }
                b.clear();
                buf = b;
            }
        }
    }
}

async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        monoio::spawn(echo(s));
    }
}

/// One runtime thread: its ring, its listener (shared port), its connections.
fn run_one(addr: SocketAddr, first: bool) -> std::io::Result<()> {
    let opts = ListenerOpts::new().reuse_port(true).backlog(BACKLOG);
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(RING_ENTRIES).build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind_with_config(addr, &opts)?;
        if first {
            eprintln!("monoio_echo listening on {addr}");
        }
        serve(listener).await
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("monoio_echo: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let threads: Vec<_> = (0..args.threads).map(|i| std::thread::spawn(move || run_one(addr, i == 0))).collect();
    for t in threads {
        let result = t.join().unwrap_or_else(|_| Err(std::io::Error::other("a runtime thread panicked")));
        if let Err(e) = result {
            eprintln!("monoio_echo: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
