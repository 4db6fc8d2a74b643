//! Test tools for coopr deployments on one machine.
//!
//! [`DelayProxy`] makes a loopback TCP link look like a WAN link: every byte is delivered a fixed
//! one-way delay after the proxy received it, in each direction, in order, without limiting
//! throughput. Black-box tests and the WAN benchmark put one proxy in front of every address of
//! another datacenter, so that every cross-DC connection pays the delay:
//!
//! ```text
//!   client ──▶ proxy (127.0.0.1:0) ──▶ target
//!              │ reader: stamps each chunk with (received + delay), queues it
//!              │ writer: waits until the stamp, writes the chunk
//!              └ the same, independently, for target ──▶ client
//! ```
//!
//! A chunk waits for its own deadline only: chunks read back to back are delivered back to
//! back, one delay later, so a stream of N chunks takes `delay + transfer`, not `N × delay`.
//!
//! [`DelayProxy::cut`] makes the link fail like a partition: the connections it carries are
//! closed and new ones are closed as soon as they are accepted, until [`DelayProxy::heal`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight per direction of one connection before the reader waits (bounds memory to
/// `CHUNK_BYTES × QUEUED_CHUNKS` per direction).
const QUEUED_CHUNKS: usize = 1024;

/// A TCP proxy on `127.0.0.1:0` that forwards every connection to one target and delays every
/// chunk, in each direction, by a one-way delay (changeable while it runs; a change applies to
/// chunks received after it). Dropping it closes the listener and every proxied connection.
pub struct DelayProxy {
    addr: SocketAddr,
    target: SocketAddr,
    delay_us: Arc<AtomicU64>,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Starts a proxy to `target` on the current tokio runtime. The target need not listen yet:
    /// each accepted connection connects to it (and is closed if that fails).
    pub async fn start(target: SocketAddr, one_way_delay: Duration) -> io::Result<DelayProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(micros(one_way_delay)));
        let (cut, cut_watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, target, delay_us.clone(), cut_watch));
        Ok(DelayProxy {
            addr,
            target,
            delay_us,
            cut,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Sets the one-way delay of chunks received from now on.
    pub fn set_delay(&self, one_way_delay: Duration) {
        self.delay_us
            .store(micros(one_way_delay), Ordering::Relaxed);
    }

    /// Cuts the link: closes every connection it carries and every new one, until healed.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Heals a cut link: new connections go through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks (a `JoinSet`): aborting it ends them all.
        self.task.abort();
    }
}

/// Replaces every `127.0.0.1:<port>` (not followed by another digit) in `text` by `to`: how a
/// deployment's generated configs are pointed at proxies (plain text, so that it also covers
/// config keys added later that hold other nodes' addresses).
pub fn replace_address(text: &str, port: u16, to: &str) -> String {
    let needle = format!("127.0.0.1:{port}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(&needle);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    delay_us: Arc<AtomicU64>,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else {
                    continue;
                };
                if *cut.borrow() {
                    drop(inbound);
                    continue;
                }
                connections.spawn(proxy_connection(inbound, target, delay_us.clone()));
            }
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                if *cut.borrow_and_update() {
                    connections.abort_all();
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(inbound: TcpStream, target: SocketAddr, delay_us: Arc<AtomicU64>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut directions = JoinSet::new();
    directions.spawn(delayed_pipe(in_read, out_write, delay_us.clone()));
    directions.spawn(delayed_pipe(out_read, in_write, delay_us));
    while directions.join_next().await.is_some() {}
}

/// Copies `from` to `to`, each chunk delivered at its receipt time plus the delay. The end of
/// the stream (or a read error) is delivered the same way, as a shutdown of `to`.
async fn delayed_pipe(mut from: OwnedReadHalf, to: OwnedWriteHalf, delay_us: Arc<AtomicU64>) {
    let (queue, chunks) = mpsc::channel(QUEUED_CHUNKS);
    let writer = tokio::spawn(deliver(chunks, to));
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = from.read(&mut buffer).await;
        let due = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
        let chunk = match read {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buffer[..n].to_vec()),
        };
        let end = chunk.is_none();
        if queue.send((due, chunk)).await.is_err() || end {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}

/// Writes each queued chunk once its due time has come; `None` shuts the write half down.
async fn deliver(mut chunks: mpsc::Receiver<(Instant, Option<Vec<u8>>)>, mut to: OwnedWriteHalf) {
    // Chunks that are due together are written together.
    let mut ready: VecDeque<Vec<u8>> = VecDeque::new();
    while let Some((due, chunk)) = chunks.recv().await {
        sleep_until(due).await;
        let Some(chunk) = chunk else {
            let _ = to.shutdown().await;
            return;
        };
        ready.push_back(chunk);
        while let Ok((due, next)) = chunks.try_recv() {
            if due > Instant::now() {
                // Not due yet: write what is, then wait for this one.
                flush(&mut ready, &mut to).await;
                sleep_until(due).await;
            }
            match next {
                Some(c) => ready.push_back(c),
                None => {
                    flush(&mut ready, &mut to).await;
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
        if !flush(&mut ready, &mut to).await {
            return;
        }
    }
}

/// How long before a chunk's due time tokio's timer hands over to a sleep of the thread. Two
/// ticks: the timer rounds its deadline up to the next millisecond and its thread may wake up
/// to a timer slack late, so with one tick it sometimes fired after the chunk was due.
const FINE_SLEEP: Duration = Duration::from_millis(2);

/// Waits until `due`, to within tens of microseconds. tokio's timer fires on whole-millisecond
/// ticks, so a chunk waiting on it alone arrives up to a millisecond late on each crossing (a
/// round trip through two proxies measured 3 ms above its two 20 ms delays). So wait on the
/// timer until [`FINE_SLEEP`] before, then sleep the rest on this thread with no timer slack,
/// the worker's other tasks handed to another thread (`block_in_place`; on a single-threaded
/// runtime, where that is not possible, the timer alone). A round trip through one 20 ms proxy
/// to an echo server: 40.216 ms at p50 with one tick and the default slack, 40.087 ms now.
async fn sleep_until(due: Instant) {
    if let Some(coarse) = due.checked_sub(FINE_SLEEP) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    let rest = due.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        return;
    }
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(|| {
            precise_timer_slack();
            std::thread::sleep(rest)
        });
    } else {
        tokio::time::sleep_until(due).await;
    }
}

/// Lets this thread's sleeps end when they are due. Linux lets a sleeping thread wake up to
/// its timer slack (50 µs by default) late, so that timers can be batched; that slack, on each
/// crossing, was half of what the proxy added to a link.
fn precise_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only the calling
    // thread's timer slack; a failure leaves it as it was.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Writes the ready chunks; false if the connection is gone.
async fn flush(ready: &mut VecDeque<Vec<u8>>, to: &mut OwnedWriteHalf) -> bool {
    while let Some(chunk) = ready.pop_front() {
        if to.write_all(&chunk).await.is_err() {
            ready.clear();
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_replaced_by_whole_port() {
        let text =
            "api = \"http://127.0.0.1:7100\"\nother = \"127.0.0.1:71001\"\nx = \"127.0.0.1:7100/\"";
        assert_eq!(
            replace_address(text, 7100, "127.0.0.1:9"),
            "api = \"http://127.0.0.1:9\"\nother = \"127.0.0.1:71001\"\nx = \"127.0.0.1:9/\""
        );
    }

    /// An echo server on 127.0.0.1:0; its task ends with the runtime.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; n];
        stream.read_exact(&mut buffer).await.expect("read");
        buffer
    }

    /// Generous: the machine running the tests may be busy.
    const SLACK: Duration = Duration::from_millis(400);

    /// A round trip through the proxy takes two one-way delays, not less, not much more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_twice_the_one_way_delay() {
        let delay = Duration::from_millis(100);
        let proxy = DelayProxy::start(echo_server().await, delay)
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        for round in 0..3u8 {
            let started = std::time::Instant::now();
            stream.write_all(&[round; 10]).await.expect("write");
            assert_eq!(read_exactly(&mut stream, 10).await, vec![round; 10]);
            let took = started.elapsed();
            assert!(
                took >= 2 * delay && took < 2 * delay + SLACK,
                "round trip {round} took {took:?}"
            );
        }
    }

    /// Chunks sent back to back arrive back to back one delay later, in order: 200 writes of
    /// 1 KiB each take about one round trip in total, not 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_to_back_chunks_are_not_delayed_one_after_another() {
        let delay = Duration::from_millis(100);
        let proxy = DelayProxy::start(echo_server().await, delay)
            .await
            .expect("proxy");
        let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut read, mut write) = stream.into_split();
        let sent: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            for chunk in to_send.chunks(1024) {
                write.write_all(chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
            write
        });
        let mut received = vec![0u8; sent.len()];
        read.read_exact(&mut received).await.expect("read");
        let took = started.elapsed();
        let _write = writer.await.expect("writer");
        assert!(received == sent, "bytes arrived out of order or changed");
        assert!(
            took >= 2 * delay && took < 2 * delay + SLACK,
            "200 chunks took {took:?}"
        );
    }

    /// A delay changed while the proxy runs applies to the next chunks; closing one side closes
    /// the other (after the delay).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_delay_can_change_and_the_end_of_stream_is_forwarded() {
        let proxy = DelayProxy::start(echo_server().await, Duration::ZERO)
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.write_all(b"fast").await.expect("write");
        let started = std::time::Instant::now();
        assert_eq!(read_exactly(&mut stream, 4).await, b"fast");
        assert!(started.elapsed() < SLACK);
        let delay = Duration::from_millis(150);
        proxy.set_delay(delay);
        assert_eq!(proxy.delay(), delay);
        let started = std::time::Instant::now();
        stream.write_all(b"slow").await.expect("write");
        assert_eq!(read_exactly(&mut stream, 4).await, b"slow");
        assert!(started.elapsed() >= 2 * delay);
        stream.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the echo server's end of stream came back")
            .expect("read");
        assert_eq!(closed, 0);
    }

    /// A cut link closes the connections it carries and refuses new ones; healed, it carries
    /// new connections again.
    #[tokio::test]
    async fn a_cut_link_closes_connections_until_healed() {
        let echo = echo_server().await;
        let proxy = DelayProxy::start(echo, Duration::ZERO).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut open, 4).await, b"ping");
        proxy.cut();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = refused.write_all(b"ping").await;
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        assert_eq!(read_exactly(&mut again, 4).await, b"pong");
    }

    /// Dropping the proxy closes the connections it carries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = DelayProxy::start(echo_server().await, Duration::ZERO)
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.write_all(b"ping").await.expect("write");
        assert_eq!(read_exactly(&mut stream, 4).await, b"ping");
        drop(proxy);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed after the drop");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
}
