//! Bodies: the request body shared by the first attempt, its retries and the mirrors (a bounded
//! replay log), and the response body that reports its size and end for metrics and logs.

use crate::sync::lock;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Boxed error used by every body in the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type crossing the proxy in both directions.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A body made of one buffer.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    boxed(http_body_util::Full::new(data.into()))
}

#[derive(Clone)]
enum Stored {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Stored {
    fn to_frame(&self) -> Frame<Bytes> {
        match self {
            Stored::Data(b) => Frame::data(b.clone()),
            Stored::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

#[derive(Default)]
struct WakeAll(Mutex<Vec<Waker>>);

impl WakeAll {
    fn register(&self, w: &Waker) {
        let mut list = lock(&self.0);
        if !list.iter().any(|x| x.will_wake(w)) {
            list.push(w.clone());
        }
    }
}

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let list = std::mem::take(&mut *lock(&self.0));
        for w in list {
            w.wake();
        }
    }
}

struct LogState {
    source: Option<ProxyBody>,
    frames: Vec<Stored>,
    /// Frames pulled from the source so far.
    total: usize,
    /// Data bytes pulled from the source so far.
    bytes: u64,
    stored_bytes: usize,
    limit: usize,
    overflow: bool,
    ended: bool,
    error: Option<String>,
}

/// The downstream request body, read once and replayable while it fits in `limit` bytes.
///
/// Every [`ReplayBody`] made by [`ReplayLog::reader`] sees the whole body from its start: the
/// first attempt, each retry and each mirror read independently and at their own pace (a slow
/// mirror never holds back the main request). Past `limit` the log stops keeping frames: readers
/// at the head still stream, readers behind fail, and [`ReplayLog::replayable`] turns false so
/// no retry starts.
pub struct ReplayLog {
    state: Mutex<LogState>,
    wake_all: Arc<WakeAll>,
}

impl ReplayLog {
    /// Wraps `source`, keeping at most `limit` bytes for replays.
    pub fn new(source: ProxyBody, limit: usize) -> Arc<Self> {
        let ended = source.is_end_stream();
        Arc::new(ReplayLog {
            state: Mutex::new(LogState {
                source: if ended { None } else { Some(source) },
                frames: Vec::new(),
                total: 0,
                bytes: 0,
                stored_bytes: 0,
                limit,
                overflow: false,
                ended,
                error: None,
            }),
            wake_all: Arc::new(WakeAll::default()),
        })
    }

    /// A new reader from the start of the body.
    pub fn reader(self: &Arc<Self>) -> ReplayBody {
        ReplayBody {
            log: self.clone(),
            pos: 0,
        }
    }

    /// Whether a new reader can still see the whole body.
    pub fn replayable(&self) -> bool {
        !lock(&self.state).overflow
    }

    /// Data bytes received from downstream so far.
    pub fn bytes_received(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// The downstream body's error (bad chunking, reset), if reading it failed.
    pub fn downstream_error(&self) -> Option<String> {
        lock(&self.state).error.clone()
    }

    /// Whether the whole body has been received.
    pub fn complete(&self) -> bool {
        lock(&self.state).ended
    }
}

/// One reader of a [`ReplayLog`].
pub struct ReplayBody {
    log: Arc<ReplayLog>,
    pos: usize,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let log = self.log.clone();
        let mut st = lock(&log.state);
        if self.pos < st.total {
            if let Some(f) = st.frames.get(self.pos) {
                let f = f.to_frame();
                self.pos += 1;
                return Poll::Ready(Some(Ok(f)));
            }
            return Poll::Ready(Some(Err(
                "request body was larger than the retry/mirror buffer".into(),
            )));
        }
        if let Some(e) = &st.error {
            return Poll::Ready(Some(Err(e.clone().into())));
        }
        if st.ended {
            return Poll::Ready(None);
        }
        log.wake_all.register(cx.waker());
        let waker = Waker::from(log.wake_all.clone());
        let mut inner_cx = Context::from_waker(&waker);
        let Some(source) = st.source.as_mut() else {
            st.ended = true;
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(&mut inner_cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                st.source = None;
                drop(st);
                log.wake_all.wake_by_ref();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = e.to_string();
                st.error = Some(msg.clone());
                st.source = None;
                drop(st);
                log.wake_all.wake_by_ref();
                Poll::Ready(Some(Err(msg.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                st.total += 1;
                let stored = if let Some(d) = frame.data_ref() {
                    st.bytes += d.len() as u64;
                    Stored::Data(d.clone())
                } else if let Some(t) = frame.trailers_ref() {
                    Stored::Trailers(t.clone())
                } else {
                    Stored::Data(Bytes::new())
                };
                if !st.overflow {
                    let len = match &stored {
                        Stored::Data(d) => d.len(),
                        Stored::Trailers(_) => 0,
                    };
                    if st.stored_bytes + len > st.limit {
                        st.overflow = true;
                        st.frames = Vec::new();
                    } else {
                        st.stored_bytes += len;
                        st.frames.push(stored);
                    }
                }
                if st.source.as_ref().is_some_and(|s| s.is_end_stream()) {
                    st.ended = true;
                    st.source = None;
                }
                self.pos += 1;
                drop(st);
                log.wake_all.wake_by_ref();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = lock(&self.log.state);
        self.pos >= st.total
            && st.error.is_none()
            && (st.ended || st.source.as_ref().is_some_and(|s| s.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let st = lock(&self.log.state);
        if self.pos == 0 && st.total == 0 {
            if let Some(s) = &st.source {
                return s.size_hint();
            }
            if st.ended {
                return SizeHint::with_exact(0);
            }
        }
        SizeHint::default()
    }
}

/// What a finished response body reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyEnd {
    /// Data bytes sent downstream.
    pub bytes: u64,
    /// Whether the body ended normally (false: error or the client went away).
    pub complete: bool,
    /// `grpc-status` from the trailers, if any.
    pub grpc_status: Option<String>,
    /// The trailers asked for with [`ObservedBody::keeping_trailers`]: `(name, first value)`.
    pub trailers: Vec<(String, String)>,
}

type OnEnd = Box<dyn FnOnce(BodyEnd) + Send + Sync>;

/// A response body that counts its bytes and calls a function once when it ends (or is dropped).
pub struct ObservedBody {
    inner: ProxyBody,
    seen: BodyEnd,
    on_end: Option<OnEnd>,
    /// Trailer names (lowercase) whose values `BodyEnd::trailers` reports.
    keep: std::sync::Arc<[String]>,
}

impl ObservedBody {
    /// Wraps `inner`; `on_end` runs exactly once.
    pub fn new(inner: ProxyBody, on_end: impl FnOnce(BodyEnd) + Send + Sync + 'static) -> Self {
        ObservedBody {
            inner,
            seen: BodyEnd::default(),
            on_end: Some(Box::new(on_end)),
            keep: std::sync::Arc::from([]),
        }
    }

    /// Reports the first value of each of these trailers (lowercase names) in `BodyEnd`.
    pub fn keeping_trailers(mut self, names: std::sync::Arc<[String]>) -> Self {
        self.keep = names;
        self
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            self.seen.complete = complete;
            f(std::mem::take(&mut self.seen));
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.seen.bytes += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    if let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                        self.seen.grpc_status = Some(s.to_string());
                    }
                    let kept: Vec<(String, String)> = self
                        .keep
                        .iter()
                        .filter_map(|n| {
                            let v = t.get(n.as_str())?.to_str().ok()?;
                            Some((n.clone(), v.to_string()))
                        })
                        .collect();
                    self.seen.trailers = kept;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(c: &[&'static str]) -> ProxyBody {
        boxed(Chunks(
            c.iter().map(|s| Bytes::from_static(s.as_bytes())).collect(),
        ))
    }

    async fn read(b: ReplayBody) -> Result<Bytes, BoxError> {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn readers_replay_the_whole_body() {
        let log = ReplayLog::new(chunks(&["ab", "cd", "ef"]), 100);
        let first = log.reader();
        assert_eq!(read(first).await.unwrap(), "abcdef");
        assert!(log.replayable() && log.complete());
        assert_eq!(read(log.reader()).await.unwrap(), "abcdef");
        assert_eq!(log.bytes_received(), 6);
    }

    #[tokio::test]
    async fn past_the_limit_only_the_head_reader_streams() {
        let log = ReplayLog::new(chunks(&["abcd", "efgh", "ij"]), 5);
        assert_eq!(read(log.reader()).await.unwrap(), "abcdefghij");
        assert!(!log.replayable());
        assert!(read(log.reader()).await.is_err());
    }

    #[tokio::test]
    async fn empty_bodies_end_at_once() {
        let log = ReplayLog::new(empty(), 0);
        let r = log.reader();
        assert!(r.is_end_stream());
        assert_eq!(r.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn observed_body_reports_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let b = ObservedBody::new(chunks(&["abc", "de"]), move |end| tx.send(end).unwrap());
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(got, "abcde");
        let end = rx.recv().unwrap();
        assert_eq!(end.bytes, 5);
        assert!(end.complete);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn observed_body_keeps_only_the_trailers_asked_for() {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "14".parse().unwrap());
        t.insert("grpc-message", "unavailable".parse().unwrap());
        t.insert("x-other", "1".parse().unwrap());
        let frames = vec![Frame::data(Bytes::from_static(b"ab")), Frame::trailers(t)];
        let inner = boxed(http_body_util::StreamBody::new(futures::stream::iter(
            frames.into_iter().map(Ok::<_, BoxError>),
        )));
        let (tx, rx) = std::sync::mpsc::channel();
        let b = ObservedBody::new(inner, move |end| tx.send(end).unwrap())
            .keeping_trailers(vec!["grpc-message".to_string(), "x-absent".to_string()].into());
        b.collect().await.unwrap();
        let end = rx.recv().unwrap();
        assert_eq!(end.grpc_status.as_deref(), Some("14"));
        assert_eq!(
            end.trailers,
            vec![("grpc-message".to_string(), "unavailable".to_string())]
        );
    }
}
