//! The control socket: `handover status|restart|upgrade|rollback|forget` talk to a running
//! master and its upgrade pipeline.
//!
//! A Unix stream socket created with mode 0600, and a peer-credential check on every
//! connection, so only the master's own user (or root) can use it. One request line, one
//! answer: `ok` or `error: …` on the first line, details after it. A client has
//! [`REQUEST_TIMEOUT`] (5 s) after connecting to send its request line; one that sends nothing
//! is disconnected, so it cannot hold a descriptor and a task of the master for ever.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::handle::MasterHandle;

/// How long a client may take, once connected, to send its request line.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait after a failed `accept` before trying again: the error (out of
/// descriptors, say) would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the control socket; the returned guard removes the file when dropped.
pub(crate) fn bind(path: &Path) -> io::Result<(tokio::net::UnixListener, SocketFile)> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::fs::PermissionsExt;
    crate::master::listeners::remove_stale_socket(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    // Before listen(): nobody can connect until the mode is 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(16)?;
    socket.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// Binds the control socket, or takes over the one a previous master of this PID bound at the
/// same path (a master upgrade). One inherited at another path is closed and its file removed.
pub(crate) fn bind_or_adopt(
    path: &Path,
    inherited: Option<(std::os::fd::OwnedFd, PathBuf)>,
) -> io::Result<(tokio::net::UnixListener, SocketFile)> {
    match inherited {
        Some((fd, old)) if old == path => {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok((
                tokio::net::UnixListener::from_std(listener)?,
                SocketFile(path.to_path_buf()),
            ))
        }
        other => {
            close_inherited(other);
            bind(path)
        }
    }
}

/// Closes a control socket inherited from a previous master and removes its file.
pub(crate) fn close_inherited(inherited: Option<(std::os::fd::OwnedFd, PathBuf)>) {
    if let Some((fd, path)) = inherited {
        drop(fd);
        drop(SocketFile(path));
    }
}

/// Removes the control socket file when the master stops.
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers requests until the master stops.
pub(crate) async fn serve(listener: tokio::net::UnixListener, master: MasterHandle) {
    let mut failures = AcceptFailures::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(unreported) = failures.failed(&e, Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        unreported,
                        "control socket: accept failed; retrying every {}ms (the same error is \
                         logged at most once a minute)",
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Some(count) = failures.recovered() {
            tracing::info!(failures = count, "control socket: accepting again");
        }
        let master = master.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, master).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

/// How often the same accept error is logged while it lasts.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Which failed accepts are logged. Out of descriptors lasts until one is freed, and at the
/// limit accepts fail and work by turns (each one that works takes the last free descriptor):
/// an error is logged the first time, and again only when it changes or a minute later; its end
/// is logged once after each such line.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// The error last logged (its errno), and when.
    logged: Option<(Option<i32>, Instant)>,
    /// Failed accepts since the last line about them.
    unreported: u64,
    /// Whether a failure was logged and no accept has worked since.
    open: bool,
}

impl AcceptFailures {
    /// Counts a failed accept. When it is to be logged, returns how many failed since the last
    /// line about them.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Option<u64> {
        let errno = error.raw_os_error();
        let repeat = self.logged.is_some_and(|(last, at)| {
            last == errno && now.saturating_duration_since(at) < REPEAT_LOG_INTERVAL
        });
        if repeat {
            self.unreported += 1;
            return None;
        }
        self.logged = Some((errno, now));
        self.open = true;
        Some(std::mem::take(&mut self.unreported))
    }

    /// An accept worked. After a logged failure, returns how many failed since (it included).
    fn recovered(&mut self) -> Option<u64> {
        if !std::mem::take(&mut self.open) {
            return None;
        }
        Some(std::mem::take(&mut self.unreported) + 1)
    }
}

async fn answer(mut stream: tokio::net::UnixStream, master: MasterHandle) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let own = crate::sys::effective_uid();
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read);
    let reply = if peer.uid() != own && peer.uid() != 0 {
        tracing::warn!(
            uid = peer.uid(),
            pid = ?peer.pid(),
            "control socket: refused a connection from another user"
        );
        format!(
            "error: permission denied: uid {} is neither the master's user ({own}) nor root\n",
            peer.uid()
        )
    } else {
        let mut raw = Vec::new();
        // A request is one short line; anything longer, or not text, is not one.
        let mut line = (&mut reader).take(256);
        let request = tokio::time::timeout(REQUEST_TIMEOUT, line.read_until(b'\n', &mut raw));
        let Ok(read) = request.await else {
            tracing::debug!(
                uid = peer.uid(),
                pid = ?peer.pid(),
                "control socket: no request within {}s; closing the connection",
                REQUEST_TIMEOUT.as_secs()
            );
            let message = format!("error: no request within {}s\n", REQUEST_TIMEOUT.as_secs());
            let _ = write.write_all(message.as_bytes()).await;
            return Ok(());
        };
        read?;
        execute(String::from_utf8_lossy(&raw).trim(), &master).await
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await?;
    // Read what the client still sends before closing: closing a socket with unread input
    // resets the connection, and the client would lose the answer.
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    Ok(())
}

/// Carries out one request line and phrases the answer.
async fn execute(line: &str, master: &MasterHandle) -> String {
    match line {
        "status" => format!("ok\n{}", render(&master.status())),
        "restart" => match master.restart() {
            Ok(()) => "ok\nhand-over requested\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        },
        "upgrade" => match master.upgrade_now().await {
            Ok(what) => format!("ok\n{what}\n"),
            Err(e) => format!("error: {e}\n"),
        },
        "reexec" => match master.reexec().await {
            Ok(what) => format!("ok\n{what}\n"),
            Err(e) => format!("error: {e}\n"),
        },
        "rollback" => match master.rollback().await {
            Ok(()) => "ok\nprevious binary restored; handing over to it\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        },
        forget if forget.starts_with("forget") => {
            match master.forget(forget.trim_start_matches("forget")).await {
                Ok(released) => format!("ok\nreleased from quarantine: {}\n", released.join(", ")),
                Err(e) => format!("error: {e}\n"),
            }
        }
        "" => "error: empty request\n".to_string(),
        other => format!(
            "error: unknown command {:?} (status, restart, upgrade, reexec, rollback, forget SHA256)\n",
            other.chars().take(40).collect::<String>()
        ),
    }
}

/// The status as `key: value` lines.
pub(crate) fn render(status: &crate::master::Status) -> String {
    use std::fmt::Write;
    let since = |t: std::time::SystemTime| {
        humantime::format_duration(round(t.elapsed().unwrap_or_default())).to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "phase: {}", status.phase);
    let _ = writeln!(out, "master pid: {}", status.master_pid);
    let master = &status.master;
    let _ = writeln!(
        out,
        "master: version {} sha256 {}, upgraded in place {} times{}",
        master.version.as_deref().unwrap_or("unknown"),
        &master.sha256[..master.sha256.len().min(12)],
        master.upgrades,
        match master.last_exec {
            Some(took) => format!(
                " (last exec and adoption took {:.1} ms)",
                took.as_secs_f64() * 1000.0
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(out, "binary: {}", status.binary.display());
    let _ = writeln!(
        out,
        "version: {}",
        status.version.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(out, "uptime: {}", since(status.started_at));
    match &status.worker {
        Some(w) => {
            let _ = writeln!(
                out,
                "worker: {} pid {} sha256 {} up {}",
                w.id,
                w.pid,
                &w.sha256[..w.sha256.len().min(12)],
                since(w.started_at)
            );
        }
        None => out.push_str("worker: none\n"),
    }
    if let Some(w) = &status.starting {
        let _ = writeln!(out, "starting: {} pid {}", w.id, w.pid);
    }
    for w in &status.draining {
        let _ = writeln!(out, "draining: {}", w.describe_draining());
    }
    if status.handover_waiting {
        let _ = writeln!(
            out,
            "hand-over: waiting, {} old generations drain (max_draining)",
            status.draining.len()
        );
    }
    let _ = writeln!(
        out,
        "hand-overs: {} (failed {}, crashes {})",
        status.handovers, status.failed_handovers, status.crashes
    );
    let upgrade = &status.upgrade;
    match &upgrade.last {
        Some(u) => {
            let _ = writeln!(
                out,
                "last upgrade: {} ago, {} from {} (sha256 {})",
                since(u.at),
                u.outcome,
                u.origin,
                &u.sha256[..u.sha256.len().min(12)]
            );
        }
        None => out.push_str("last upgrade: none\n"),
    }
    if let Some(v) = &upgrade.highest_installed {
        let _ = writeln!(out, "highest installed: {v}");
    }
    if let Some(release) = &upgrade.newest_signed_release {
        let _ = writeln!(out, "newest signed release: {release}");
    }
    if let Some(rollout) = &upgrade.rollout {
        let _ = writeln!(out, "rollout: {rollout}");
    }
    for warning in &upgrade.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    if let Some(p) = &upgrade.probation {
        let until = match p.until {
            Some(t) => format!(
                "{} left",
                humantime::format_duration(round(
                    t.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                ))
            ),
            None => "until a worker of it is ready".into(),
        };
        let _ = writeln!(
            out,
            "probation: sha256 {} version {} ({until})",
            &p.sha256[..p.sha256.len().min(12)],
            p.version.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(waiting) = &upgrade.waiting {
        let _ = writeln!(out, "waiting: {waiting}");
    }
    let _ = writeln!(out, "quarantined: {}", upgrade.quarantine.len());
    for q in &upgrade.quarantine {
        let _ = writeln!(
            out,
            "quarantined: sha256 {} {} ago: {}",
            q.sha256,
            since(q.at),
            q.reason
        );
    }
    out
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

/// Sends one request to a master's control socket and returns its answer (client side).
pub fn request(socket: &Path, command: &str) -> crate::error::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        crate::error::Error::io(
            format!("connecting to the control socket {}", socket.display()),
            e,
        )
    })?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| crate::error::Error::io("sending the request", e))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| crate::error::Error::io("reading the answer", e))?;
    match answer.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        _ => Err(crate::error::Error::Master(
            answer.trim().trim_start_matches("error: ").to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{AcceptFailures, REPEAT_LOG_INTERVAL};
    use std::io;
    use std::time::{Duration, Instant};

    // regression: every failed accept (EMFILE, retried every 100 ms) was logged (issue 13).
    #[test]
    fn the_same_accept_error_is_logged_once_a_minute_at_most() {
        let mut failures = AcceptFailures::default();
        let emfile = || io::Error::from_raw_os_error(libc::EMFILE);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(
            failures.failed(&emfile(), at(0)),
            Some(0),
            "the first is logged"
        );
        for i in 1..50 {
            assert_eq!(
                failures.failed(&emfile(), at(i * 100)),
                None,
                "a repeat is not"
            );
        }
        assert_eq!(failures.recovered(), Some(50));
        assert_eq!(failures.recovered(), None, "its end is logged once");
        // At the limit, accepts fail and work by turns: still quiet.
        for i in 50..100 {
            assert_eq!(failures.failed(&emfile(), at(i * 100)), None);
            assert_eq!(failures.recovered(), None);
        }
        let enfile = io::Error::from_raw_os_error(libc::ENFILE);
        assert_eq!(
            failures.failed(&enfile, at(10_000)),
            Some(50),
            "another error is"
        );
        assert_eq!(failures.failed(&emfile(), at(10_100)), Some(0));
        let later = at(10_100) + REPEAT_LOG_INTERVAL;
        assert_eq!(
            failures.failed(&emfile(), later),
            Some(0),
            "and a minute later"
        );
        assert_eq!(failures.recovered(), Some(1));
    }
}
