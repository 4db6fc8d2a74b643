//! What a [`DelayProxy`] adds to a link beyond its delay: round trips of a 4-byte message to a
//! loopback echo server, first directly, then through a proxy.
//!
//! ```sh
//! cargo run --release -p coopr-testkit --example proxy_cost -- [DELAY_MS] [ROUNDS]   # 20 200
//! ```

use std::time::{Duration, Instant};

use coopr_testkit::DelayProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let delay_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let rounds: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(200)
        .max(1);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut buffer = [0u8; 256];
                while let Ok(n @ 1..) = socket.read(&mut buffer).await {
                    if socket.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let proxy = DelayProxy::start(echo, Duration::from_millis(delay_ms)).await?;
    for (name, to) in [("direct", echo), ("through the proxy", proxy.addr())] {
        let mut socket = TcpStream::connect(to).await?;
        socket.set_nodelay(true)?;
        let mut took = Vec::with_capacity(rounds);
        let mut buffer = [0u8; 64];
        for _ in 0..rounds {
            let started = Instant::now();
            socket.write_all(b"ping").await?;
            let mut got = 0;
            while got < 4 {
                match socket.read(&mut buffer).await? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => got += n,
                }
            }
            took.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "{name}: round trip p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    println!("(the proxy's delay: {delay_ms} ms each way)");
    Ok(())
}
