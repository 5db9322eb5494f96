//! A tokio echo server, as a reference peer for the sweep: what a user would write with
//! the usual async runtime, to be measured beside ringbench's backends.
//!
//! ```text
//! cargo build --release --example tokio_echo
//! ./run_matrix.sh --target tokio='target/release/examples/tokio_echo --port {port}'
//! ```
//!
//! One runtime thread by default (`--threads N` for more), `TCP_NODELAY`, and a plain
//! read-then-write-all loop over a 4 KiB buffer per connection. Stops on SIGINT/SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

const BUF_BYTES: usize = 4096;

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
    let mut buf = [0u8; BUF_BYTES];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    eprintln!("tokio_echo listening on {}", listener.local_addr()?);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (s, _) = accepted?;
                s.set_nodelay(true)?;
                tokio::spawn(echo(s));
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio_echo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let result = runtime.and_then(|rt| rt.block_on(serve(args.port)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo: {e}");
            ExitCode::from(1)
        }
    }
}
