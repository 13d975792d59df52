//! The control socket: `handover status|restart|upgrade|rollback|forget` talk to a running
//! master and its upgrade pipeline.
//!
//! A Unix stream socket created with mode 0600, and a peer-credential check on every
//! connection, so only the master's own user (or root) can use it. One request line, one
//! answer: `ok` or `error: …` on the first line, details after it.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::handle::MasterHandle;

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

/// Removes the control socket file when the master stops.
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers requests until the master stops.
pub(crate) async fn serve(listener: tokio::net::UnixListener, master: MasterHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: do not spin on an error that will repeat at once.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let master = master.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, master).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn answer(mut stream: tokio::net::UnixStream, master: MasterHandle) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let own = crate::sys::effective_uid();
    if peer.uid() != own && peer.uid() != 0 {
        tracing::warn!(
            uid = peer.uid(),
            "control socket: refused a connection from another user"
        );
        return stream.write_all(b"error: permission denied\n").await;
    }
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read);
    let mut raw = Vec::new();
    // A request is one short line; anything longer, or not text, is not one.
    (&mut reader).take(256).read_until(b'\n', &mut raw).await?;
    let line = String::from_utf8_lossy(&raw);
    let reply = match line.trim() {
        "status" => format!("ok\n{}", render(&master.status())),
        "restart" => match master.restart() {
            Ok(()) => "ok\nhand-over requested\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        },
        "upgrade" => match master.upgrade_now().await {
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
            "error: unknown command {:?} (status, restart, upgrade, rollback, forget SHA256)\n",
            other.chars().take(40).collect::<String>()
        ),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await?;
    // Read what the client still sends before closing: closing a socket with unread input
    // resets the connection, and the client would lose the answer.
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    Ok(())
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
        let _ = writeln!(out, "draining: {} pid {}", w.id, w.pid);
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
