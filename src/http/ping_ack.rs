//! Holds back an HTTP/2 client's PING acknowledgements briefly, so that the final GOAWAY of a
//! graceful shutdown covers every stream the client opened before it saw the first one.
//!
//! h2's server sends the final GOAWAY (with the real last stream id) as soon as it reads the
//! acknowledgement of its shutdown PING. h2's client, though, writes a PING acknowledgement
//! ahead of the HEADERS of a stream it queued just before it read that first GOAWAY, so those
//! HEADERS arrive right after the acknowledgement, above the last stream id, and the stream is
//! refused. Delivering the acknowledgement to the server [`HOLD`] after the bytes that follow
//! it lets those streams in. A PING is connection-level: moving its acknowledgement after other
//! frames changes nothing else. Connections that are not HTTP/2 pass straight through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an acknowledgement is held back.
const HOLD: Duration = Duration::from_millis(20);

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Comparing the first bytes with the HTTP/2 preface (this many matched).
    Preface(usize),
    /// HTTP/2 frames; `payload` bytes of the current (passed) frame are still to come.
    Frames { payload: usize },
    /// Not HTTP/2: every byte passes straight through.
    Plain,
}

pub(super) struct HoldPingAcks<I> {
    io: I,
    mode: Mode,
    /// A frame header (or a whole PING acknowledgement) being gathered.
    partial: Vec<u8>,
    /// Bytes the server may read now, from `at`.
    ready: Vec<u8>,
    at: usize,
    /// Acknowledgements held back, and until when.
    held: Vec<u8>,
    release: Option<Pin<Box<tokio::time::Sleep>>>,
    eof: bool,
}

impl<I> HoldPingAcks<I> {
    pub(super) fn new(io: I) -> Self {
        Self {
            io,
            mode: Mode::Preface(0),
            partial: Vec::new(),
            ready: Vec::new(),
            at: 0,
            held: Vec::new(),
            release: None,
            eof: false,
        }
    }

    /// Sorts bytes read from the client into what is ready and what is held.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.mode {
                Mode::Plain => {
                    self.ready.extend_from_slice(data);
                    return;
                }
                Mode::Preface(seen) => {
                    let n = data.len().min(PREFACE.len() - seen);
                    if data[..n] != PREFACE[seen..seen + n] {
                        self.mode = Mode::Plain;
                        continue;
                    }
                    self.ready.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.mode = match seen + n {
                        24 => Mode::Frames { payload: 0 },
                        seen => Mode::Preface(seen),
                    };
                }
                Mode::Frames { payload } if payload > 0 => {
                    let n = data.len().min(payload);
                    self.ready.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.mode = Mode::Frames {
                        payload: payload - n,
                    };
                }
                Mode::Frames { .. } => {
                    let wanted = match self.partial.get(..FRAME_HEADER) {
                        Some(header) if is_ping_ack(header) => FRAME_HEADER + 8,
                        _ => FRAME_HEADER,
                    };
                    let n = data.len().min(wanted - self.partial.len());
                    self.partial.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.partial.len() < wanted {
                        continue;
                    }
                    if wanted == FRAME_HEADER && is_ping_ack(&self.partial) {
                        continue; // gather its 8 bytes of payload too
                    }
                    if wanted > FRAME_HEADER {
                        self.held.append(&mut self.partial);
                        if self.release.is_none() {
                            self.release = Some(Box::pin(tokio::time::sleep(HOLD)));
                        }
                    } else {
                        let header = &self.partial;
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        self.ready.append(&mut self.partial);
                        self.mode = Mode::Frames {
                            payload: length as usize,
                        };
                    }
                }
            }
        }
    }
}

fn is_ping_ack(header: &[u8]) -> bool {
    header[..3] == [0, 0, 8] && header[3] == PING && header[4] & ACK != 0
}

impl<I: AsyncRead + Unpin> AsyncRead for HoldPingAcks<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(release) = this.release.as_mut() {
                if release.as_mut().poll(cx).is_ready() || this.eof {
                    this.release = None;
                    let held = std::mem::take(&mut this.held);
                    this.ready.extend_from_slice(&held);
                }
            }
            if this.at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.at);
                buf.put_slice(&this.ready[this.at..this.at + n]);
                this.at += n;
                if this.at == this.ready.len() {
                    this.ready.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Plain && this.held.is_empty() && this.partial.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut bytes = [0u8; 8192];
            let mut read = ReadBuf::new(&mut bytes);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.eof = true;
                    let partial = std::mem::take(&mut this.partial);
                    this.ready.extend_from_slice(&partial);
                }
                Poll::Ready(Ok(())) => this.feed(read.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HoldPingAcks<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    async fn read_all(reader: &mut HoldPingAcks<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_ping_ack_is_delivered_after_the_frames_that_follow_it() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let headers = frame(0x1, 0x5, 7, b"hpack");
        let ack = frame(PING, ACK, 0, &[1; 8]);
        let ping = frame(PING, 0, 0, &[2; 8]);
        let data = frame(0x0, 0x1, 7, &[9; 300]);
        let mut sent = PREFACE.to_vec();
        sent.extend(&ack);
        sent.extend(&headers);
        sent.extend(&ping);
        sent.extend(&data);
        // Written one byte at a time: frames split anywhere are reassembled.
        let writer = tokio::spawn(async move {
            for byte in sent {
                client.write_all(&[byte]).await.unwrap();
            }
        });
        let mut reader = HoldPingAcks::new(server);
        let got = read_all(&mut reader).await;
        writer.await.unwrap();
        let mut expected = PREFACE.to_vec();
        expected.extend(&headers);
        expected.extend(&ping);
        expected.extend(&data);
        expected.extend(&ack);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_ping_ack_is_held_no_longer_than_the_hold() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let ack = frame(PING, ACK, 0, &[1; 8]);
        let mut sent = PREFACE.to_vec();
        sent.extend(&ack);
        client.write_all(&sent).await.unwrap();
        let mut reader = HoldPingAcks::new(server);
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(5), reader.read_exact(&mut got))
            .await
            .expect("released after the hold while the connection stays open")
            .unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn http1_passes_through_untouched() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\x00\x00\x08\x06\x01".to_vec();
        client.write_all(&request).await.unwrap();
        drop(client);
        let mut reader = HoldPingAcks::new(server);
        assert_eq!(read_all(&mut reader).await, request);
    }
}
