//! Connections counted from accept to the last drop of their socket, upgraded ones (WebSockets)
//! included, and cut when their listener's drain timeout passes.
//!
//! hyper hands an upgraded connection's socket to the application and forgets it; the count
//! follows the socket itself, so a drain waits for those too.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Every connection a `serve` call accepted and that is still open.
#[derive(Default)]
pub(super) struct Connections {
    open: AtomicUsize,
    changed: Notify,
    /// Each connection's listener (its index in `serve_many`) and cut switch.
    live: Mutex<Vec<(usize, Weak<Cut>)>>,
}

/// One connection's switch: once cut, its reads and writes fail.
#[derive(Default)]
struct Cut {
    cut: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Connections {
    /// Counts `io`, accepted on listener `listener`, until it is dropped.
    pub(super) fn track<I>(self: &Arc<Self>, listener: usize, io: I) -> Tracked<I> {
        self.open.fetch_add(1, Ordering::SeqCst);
        let cut = Arc::new(Cut::default());
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // Pruned when it has doubled since, so an accept costs O(1) on average.
        if live.len() >= 64 && live.len() > 2 * self.open() {
            live.retain(|(_, c)| c.strong_count() > 0);
        }
        live.push((listener, Arc::downgrade(&cut)));
        Tracked {
            io,
            cut,
            connections: self.clone(),
        }
    }

    /// How many connections are open.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Completes at the next change of the count (or at once, if it is zero).
    pub(super) async fn changed_or_zero(&self) {
        let notified = self.changed.notified();
        if self.open() == 0 {
            return;
        }
        notified.await;
    }

    /// Cuts every open connection of `listener`; returns how many.
    pub(super) fn cut(&self, listener: usize) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut count = 0;
        for cut in live
            .iter()
            .filter(|(l, _)| *l == listener)
            .filter_map(|(_, c)| c.upgrade())
        {
            if !cut.cut.swap(true, Ordering::SeqCst) {
                count += 1;
            }
            cut.read.wake();
            cut.write.wake();
        }
        count
    }
}

/// A connection's socket, counted while it exists.
pub(super) struct Tracked<I> {
    io: I,
    cut: Arc<Cut>,
    connections: Arc<Connections>,
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::SeqCst);
        self.connections.changed.notify_waiters();
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the drain timeout of the connection's listener passed",
    )
}

impl<I> Tracked<I> {
    /// Whether the connection is cut, registering `waker` to learn when it is.
    fn is_cut(&self, waker: &AtomicWaker, cx: &Context<'_>) -> bool {
        if self.cut.cut.load(Ordering::SeqCst) {
            return true;
        }
        waker.register(cx.waker());
        self.cut.cut.load(Ordering::SeqCst)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(&this.cut.read, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(&this.cut.write, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(&this.cut.write, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(&this.cut.write, cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_is_counted_until_its_socket_is_dropped_and_a_cut_fails_its_reads() {
        let connections = Arc::new(Connections::default());
        let (a, mut peer_a) = tokio::io::duplex(64);
        let (b, _peer_b) = tokio::io::duplex(64);
        let mut first = connections.track(0, a);
        let second = connections.track(1, b);
        assert_eq!(connections.open(), 2);

        // A read parked on listener 0's connection is woken by the cut, and fails.
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let result = first.read(&mut byte).await;
            (result.map_err(|e| e.kind()), first)
        });
        tokio::task::yield_now().await;
        assert_eq!(connections.cut(0), 1);
        assert_eq!(connections.cut(0), 0, "cut once");
        let (result, mut first) = reader.await.unwrap();
        assert_eq!(result, Err(io::ErrorKind::ConnectionAborted));
        assert!(first.write_all(b"x").await.is_err());
        // The other listener's connection is untouched.
        assert_eq!(connections.open(), 2);
        drop(first);
        peer_a.shutdown().await.unwrap();
        assert_eq!(connections.open(), 1);
        let waiting = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while connections.open() > 0 {
                    connections.changed_or_zero().await;
                }
            })
        };
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends when the last socket is dropped")
            .unwrap();
    }
}
