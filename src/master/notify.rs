//! Tells systemd (`Type=notify`) what the master is doing: `READY=1` once the first worker is
//! ready, `RELOADING=1` with `MONOTONIC_USEC` when a hand-over starts and `READY=1` when it
//! ends, `STOPPING=1`, and a `STATUS=` line with every change. `MAINPID` is the master.

use std::os::unix::net::UnixDatagram;

use tokio::sync::watch;

use super::{Phase, Status};

/// The service manager's notification socket, from `NOTIFY_SOCKET`.
pub(crate) struct ServiceManager {
    socket: UnixDatagram,
    address: std::os::unix::net::SocketAddr,
}

impl ServiceManager {
    /// Reads and unsets `NOTIFY_SOCKET` (so workers do not inherit it).
    pub(crate) fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let path = path.to_string_lossy().into_owned();
        let address = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Self { socket, address })
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// Follows the master's status until it stops.
    pub(crate) async fn follow(self, mut status: watch::Receiver<Status>) {
        let mut previous: Option<Phase> = None;
        let mut announced_ready = false;
        loop {
            let current = status.borrow_and_update().clone();
            let line = status_line(&current);
            let message = match (previous, current.phase) {
                (_, Phase::HandingOver) if previous != Some(Phase::HandingOver) => {
                    format!(
                        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={line}",
                        monotonic_usec()
                    )
                }
                (_, Phase::Serving | Phase::Draining)
                    if !announced_ready || previous == Some(Phase::HandingOver) =>
                {
                    announced_ready = true;
                    format!("READY=1\nMAINPID={}\nSTATUS={line}", std::process::id())
                }
                (_, Phase::Stopping) if previous != Some(Phase::Stopping) => {
                    format!("STOPPING=1\nSTATUS={line}")
                }
                _ => format!("STATUS={line}"),
            };
            self.send(&message);
            previous = Some(current.phase);
            if current.phase == Phase::Stopped || status.changed().await.is_err() {
                return;
            }
        }
    }
}

fn status_line(status: &Status) -> String {
    match &status.worker {
        Some(w) => format!(
            "{}: worker {} (pid {}, sha256 {}), {} hand-overs",
            status.phase,
            w.id,
            w.pid,
            &w.sha256[..w.sha256.len().min(12)],
            status.handovers
        ),
        None => format!("{}: no worker", status.phase),
    }
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}
