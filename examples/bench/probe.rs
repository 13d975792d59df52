//! One-shot `GET /` on a fresh connection: which worker answers, and from which binary.
//!
//! A fresh connection per probe matters: kept-alive connections stay with the worker that
//! accepted them, while a new one is accepted by whichever worker is accepting now, so the
//! first probe answered by a new pid is the first moment the new worker serves.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Who answered a probe.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) pid: u32,
    /// The first 12 hex digits of the worker binary's SHA-256, as the hello service prints it.
    pub(crate) sha256: String,
}

/// Sends `GET /` with `Connection: close` and parses the hello line.
pub(crate) fn get(addr: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::with_capacity(512);
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") {
        let status = text.lines().next().unwrap_or("(empty response)");
        return Err(io::Error::other(format!("unexpected answer: {status}")));
    }
    let word = |prefix: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let pid = word("pid=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("no pid= in the answer"))?;
    let sha256 = word("sha256=").ok_or_else(|| io::Error::other("no sha256= in the answer"))?;
    Ok(Answer { pid, sha256 })
}
