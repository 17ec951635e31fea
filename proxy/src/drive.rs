//! Running an HTTP connection and the futures hyper spawns for it in one task, and writing what
//! one turn of that task produced in one system call.
//!
//! hyper spawns a task per HTTP/2 stream (server side) and per request (h2 client side: the
//! future waiting for the response, and the body pipe). Scheduled as separate tasks, every stream
//! that answers wakes the connection, which runs right after it (tokio's LIFO slot) and writes
//! that one answer: one `writev` and one wake-up of the peer per request. Envoy instead handles
//! every ready stream of a connection, then writes once.
//!
//! [`Driven`] does the same: it polls the connection, then every spawned future that is ready,
//! and polls the connection again while those futures gave it something to do (a bounded number
//! of rounds). [`BatchIo`] holds what an HTTP/2 connection writes during that turn and writes it
//! out at its end ([`Flush`]). A connection's streams thus share its task (as in Envoy, one
//! connection is served by one thread).

use crate::sync::lock;
use futures::stream::{FuturesUnordered, StreamExt};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Futures spawned for a connection, waiting to join its task.
#[derive(Default)]
pub struct Queue(Mutex<Vec<Spawned>>);

thread_local! {
    /// The queue of the client connection being polled on this thread, if any.
    static CURRENT: RefCell<Option<Arc<Queue>>> = const { RefCell::new(None) };
}

/// Restores [`CURRENT`] when dropped (also on panic).
struct CurrentGuard(Option<Arc<Queue>>);

impl CurrentGuard {
    fn set(queue: &Arc<Queue>) -> Self {
        CurrentGuard(CURRENT.with(|c| c.replace(Some(queue.clone()))))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// hyper's executor for the proxy's connections.
///
/// * With a queue ([`ConnExecutor::for_connection`], a server connection): futures join that
///   connection's [`Driven`] task (hyper's server spawns only HTTP/2 streams).
/// * Without ([`ConnExecutor::default`], the upstream client): futures spawned while a client
///   connection's task polls that connection (the h2 client's response futures and body pipes)
///   join that task; anything else (a new connection, spawned from a request) becomes a new
///   task, itself [`Driven`].
#[derive(Clone, Default)]
pub struct ConnExecutor {
    queue: Option<Arc<Queue>>,
}

impl std::fmt::Debug for ConnExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnExecutor")
            .field("connection", &self.queue.is_some())
            .finish()
    }
}

impl ConnExecutor {
    /// An executor whose futures join the connection driven with `queue`.
    pub fn for_connection(queue: Arc<Queue>) -> Self {
        ConnExecutor { queue: Some(queue) }
    }
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let queue = self
            .queue
            .clone()
            .or_else(|| CURRENT.with(|c| c.borrow().clone()));
        match queue {
            Some(q) => lock(&q.0).push(Box::pin(fut)),
            None => {
                tokio::spawn(Driven::new(fut, Arc::new(Queue::default()), None, true));
            }
        }
    }
}

/// Writes out what a connection buffered during a turn of its task.
pub trait Flush: Send + Sync {
    /// Writes as much as the socket takes; registers for writability if it takes less.
    fn flush_batch(&self, cx: &mut Context<'_>);
}

/// How often one poll of [`Driven`] goes back to the connection after its streams woke it.
const MAX_ROUNDS: usize = 4;

/// Wakes the task unless it is being polled (then the poll sees `woken` and goes round again).
struct MainWake {
    woken: AtomicBool,
    polling: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for MainWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst)
            && let Some(w) = lock(&self.task).as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// A connection future and the futures spawned for it, polled in one task; resolves with the
/// connection's output once the connection and every spawned future are done.
pub struct Driven<F: Future> {
    main: Option<Pin<Box<F>>>,
    output: Option<F::Output>,
    queue: Arc<Queue>,
    spawned: FuturesUnordered<Spawned>,
    wake: Arc<MainWake>,
    main_waker: Waker,
    flush: Option<Arc<dyn Flush>>,
    current: bool,
}

// Nothing is pinned in place: `main` is boxed, the output only moved out.
impl<F: Future> Unpin for Driven<F> {}

impl<F: Future> Driven<F> {
    /// Drives `main`; futures pushed to `queue` join it; `flush` runs at the end of each turn;
    /// `current`: futures the default [`ConnExecutor`] spawns while `main` is polled join too.
    pub fn new(main: F, queue: Arc<Queue>, flush: Option<Arc<dyn Flush>>, current: bool) -> Self {
        let wake = Arc::new(MainWake {
            woken: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Driven {
            main: Some(Box::pin(main)),
            output: None,
            queue,
            spawned: FuturesUnordered::new(),
            main_waker: Waker::from(wake.clone()),
            wake,
            flush,
            current,
        }
    }

    fn adopt(&mut self) {
        let mut q = lock(&self.queue.0);
        for f in q.drain(..) {
            self.spawned.push(f);
        }
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut t = lock(&this.wake.task);
            if !t.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *t = Some(cx.waker().clone());
            }
        }
        this.wake.polling.store(true, Ordering::SeqCst);
        let main_waker = this.main_waker.clone();
        let mut main_cx = Context::from_waker(&main_waker);
        for _ in 0..MAX_ROUNDS {
            this.wake.woken.store(false, Ordering::SeqCst);
            if let Some(main) = this.main.as_mut() {
                let polled = {
                    let _current = this.current.then(|| CurrentGuard::set(&this.queue));
                    main.as_mut().poll(&mut main_cx)
                };
                if let Poll::Ready(out) = polled {
                    this.output = Some(out);
                    this.main = None;
                }
            }
            this.adopt();
            while let Poll::Ready(Some(())) = this.spawned.poll_next_unpin(cx) {}
            if this.main.is_none() || !this.wake.woken.load(Ordering::SeqCst) {
                break;
            }
        }
        if let Some(f) = &this.flush {
            f.flush_batch(&mut main_cx);
        }
        this.wake.polling.store(false, Ordering::SeqCst);
        if this.wake.woken.swap(false, Ordering::SeqCst) && this.main.is_some() {
            cx.waker().wake_by_ref();
        }
        if this.main.is_none() {
            this.adopt();
            while let Poll::Ready(Some(())) = this.spawned.poll_next_unpin(cx) {}
            if this.spawned.is_empty() {
                return Poll::Ready(this.output.take().expect("set when main finished"));
            }
        }
        Poll::Pending
    }
}

/// What [`BatchIo`] does with writes, decided by the first bytes the client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet: writes go straight through.
    Undecided,
    /// HTTP/2 (the client preface): writes are held until the end of the task's turn.
    Batch,
    /// Anything else (HTTP/1.x, whose upgraded connections are copied by other tasks):
    /// straight through.
    Direct,
}

const PREFACE_START: &[u8; 4] = b"PRI ";

/// Above this many held bytes a write first tries to send them.
const HIGH_WATER: usize = 64 * 1024;

/// Held bytes' buffer capacity kept between turns.
const KEEP_CAPACITY: usize = 16 * 1024;

struct BatchState<IO> {
    io: IO,
    mode: Mode,
    seen: Vec<u8>,
    out: Vec<u8>,
    error: Option<(io::ErrorKind, String)>,
}

impl<IO: AsyncWrite + Unpin> BatchState<IO> {
    fn error(&self) -> Option<io::Error> {
        self.error
            .as_ref()
            .map(|(k, m)| io::Error::new(*k, m.clone()))
    }

    /// Writes held bytes until none are left or the socket is full.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.error() {
            return Poll::Ready(Err(e));
        }
        let mut sent = 0;
        let result = loop {
            if sent == self.out.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.out[sent..]) {
                Poll::Ready(Ok(0)) => {
                    break Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
                }
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if sent == self.out.len() {
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        } else {
            self.out.drain(..sent);
        }
        if let Poll::Ready(Err(e)) = &result {
            self.error = Some((e.kind(), e.to_string()));
        }
        result
    }

    /// Makes room for more held bytes: `Ready` once under the high-water mark.
    fn room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.error() {
            return Poll::Ready(Err(e));
        }
        if self.out.len() >= HIGH_WATER {
            if let Poll::Ready(Err(e)) = self.drain(cx) {
                return Poll::Ready(Err(e));
            }
            if self.out.len() >= HIGH_WATER {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A server connection whose HTTP/2 writes are held until [`Flush::flush_batch`] (see the
/// module documentation); HTTP/1.x connections write straight through.
pub struct BatchIo<IO> {
    state: Arc<Mutex<BatchState<IO>>>,
}

impl<IO> BatchIo<IO>
where
    IO: AsyncWrite + Unpin + Send + 'static,
{
    /// Wraps `io`.
    pub fn new(io: IO) -> Self {
        BatchIo {
            state: Arc::new(Mutex::new(BatchState {
                io,
                mode: Mode::Undecided,
                seen: Vec::new(),
                out: Vec::new(),
                error: None,
            })),
        }
    }

    /// The handle [`Driven`] writes held bytes with.
    pub fn flusher(&self) -> Arc<dyn Flush> {
        Arc::new(Flusher(self.state.clone()))
    }
}

struct Flusher<IO>(Arc<Mutex<BatchState<IO>>>);

impl<IO: AsyncWrite + Unpin + Send> Flush for Flusher<IO> {
    fn flush_batch(&self, cx: &mut Context<'_>) {
        let mut st = lock(&self.0);
        if st.mode == Mode::Batch && !st.out.is_empty() {
            // An error is kept and returned by the connection's next write.
            let _ = st.drain(cx);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for BatchIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        let before = buf.filled().len();
        let polled = Pin::new(&mut st.io).poll_read(cx, buf);
        if st.mode == Mode::Undecided && matches!(polled, Poll::Ready(Ok(()))) {
            let new = &buf.filled()[before..];
            if new.is_empty() {
                st.mode = Mode::Direct;
            } else {
                let take = (PREFACE_START.len() - st.seen.len()).min(new.len());
                let new = new[..take].to_vec();
                st.seen.extend_from_slice(&new);
                if !PREFACE_START.starts_with(&st.seen) {
                    st.mode = Mode::Direct;
                } else if st.seen.len() == PREFACE_START.len() {
                    st.mode = Mode::Batch;
                }
            }
            if st.mode != Mode::Undecided {
                st.seen = Vec::new();
            }
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for BatchIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        if st.mode != Mode::Batch {
            return Pin::new(&mut st.io).poll_write(cx, buf);
        }
        std::task::ready!(st.room(cx))?;
        st.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        if st.mode != Mode::Batch {
            return Pin::new(&mut st.io).poll_write_vectored(cx, bufs);
        }
        std::task::ready!(st.room(cx))?;
        let mut n = 0;
        for b in bufs {
            st.out.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        let st = lock(&self.state);
        st.mode == Mode::Batch || st.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if st.mode != Mode::Batch {
            return Pin::new(&mut st.io).poll_flush(cx);
        }
        // Held until the end of the task's turn ([`Flush::flush_batch`]).
        match st.error() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if st.mode == Mode::Batch {
            std::task::ready!(st.drain(cx))?;
        }
        Pin::new(&mut st.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads what is available now (or nothing).
    async fn available(r: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut buf = vec![0; 1024];
        match tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn http2_writes_wait_for_the_end_of_the_turn() {
        let (mut peer, conn) = tokio::io::duplex(1 << 16);
        let mut io = BatchIo::new(conn);
        let flush = io.flusher();
        peer.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0; 16];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"one ").await.unwrap();
        io.write_all(b"two").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(available(&mut peer).await, b"", "held until the turn ends");
        std::future::poll_fn(|cx| {
            flush.flush_batch(cx);
            Poll::Ready(())
        })
        .await;
        assert_eq!(available(&mut peer).await, b"one two");
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye", "shutdown writes what is held first");
    }

    #[tokio::test]
    async fn http1_writes_go_straight_through() {
        // "P" could start the HTTP/2 preface, "PO" cannot.
        let (mut peer, conn) = tokio::io::duplex(1 << 16);
        let mut io = BatchIo::new(conn);
        peer.write_all(b"P").await.unwrap();
        let mut buf = [0; 1];
        io.read_exact(&mut buf).await.unwrap();
        peer.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0; 16];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(available(&mut peer).await, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn spawned_futures_run_in_the_connection_task_and_are_awaited() {
        let queue = Arc::new(Queue::default());
        let exec = ConnExecutor::for_connection(queue.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let main = async move {
            let done = done_tx.clone();
            exec.execute(async move {
                // Finishes after the connection did.
                let v: u32 = rx.await.unwrap();
                done.send(v).unwrap();
            });
            tokio::task::yield_now().await;
            "main done"
        };
        let driven = tokio::spawn(Driven::new(main, queue, None, false));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!driven.is_finished(), "waits for the spawned future");
        tx.send(7).unwrap();
        assert_eq!(driven.await.unwrap(), "main done");
        assert_eq!(done_rx.recv().await, Some(7));
    }

    #[tokio::test]
    async fn the_default_executor_joins_the_client_connection_being_polled() {
        let queue = Arc::new(Queue::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let main = async move {
            // As hyper's h2 client does from its connection task.
            ConnExecutor::default().execute(async move {
                tx.send(()).unwrap();
            });
        };
        let q = queue.clone();
        let mut driven = Driven::new(main, queue, None, true);
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut driven).poll(cx))).await;
        assert!(polled.is_ready(), "ran the spawned future in the same poll");
        assert!(lock(&q.0).is_empty());
        rx.await.unwrap();
    }
}
