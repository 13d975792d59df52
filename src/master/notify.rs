//! The sd_notify protocol, both ways.
//!
//! Up: tells systemd (`Type=notify`) what the master is doing: `READY=1` once the first worker
//! is ready, `RELOADING=1` with `MONOTONIC_USEC` when a hand-over starts and `READY=1` when it
//! ends, `STOPPING=1`, and a `STATUS=` line with every change. `MAINPID` is the master.
//!
//! Down: each worker of `handover run` gets a `NOTIFY_SOCKET` of its own (mode 0600, in the
//! runtime directory of [`super::program`]). A message counts only when the kernel says
//! (`SO_PASSCRED`) it was sent by that worker's process or one of its descendants; anything else
//! is logged once per sender and ignored. A sender that exits before the master has read its
//! message cannot be placed in the tree any more, so its message is ignored too: a program that
//! sends `READY=1` from a helper should keep the helper alive until it is read (`systemd-notify`
//! does, it waits on `BARRIER=1`), or send from its own process.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::sync::watch;

use crate::sys::Sender;

use super::{Phase, Status};

static ORIGINAL_SOCKET: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();

/// The `NOTIFY_SOCKET` this master was started with (unset from its environment since).
pub(crate) fn original_socket() -> Option<std::ffi::OsString> {
    ORIGINAL_SOCKET.get().cloned()
}

/// The service manager's notification socket, from `NOTIFY_SOCKET`.
pub(crate) struct ServiceManager {
    socket: UnixDatagram,
    address: std::os::unix::net::SocketAddr,
}

impl ServiceManager {
    /// Reads and unsets `NOTIFY_SOCKET` (so workers do not inherit it; a master upgrade passes
    /// it on to the new code, see [`original_socket`]).
    pub(crate) fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let _ = ORIGINAL_SOCKET.set(path.clone());
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

    /// Sends one message now (before an exec, which a task would not live to see).
    pub(crate) fn send_now(&self, message: &str) {
        self.send(message);
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// Follows the master's status until it stops.
    pub(crate) async fn follow(self: std::sync::Arc<Self>, mut status: watch::Receiver<Status>) {
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
    let mut line = serving_line(status);
    if !status.draining.is_empty() {
        let each: Vec<String> = status
            .draining
            .iter()
            .map(|w| w.describe_draining())
            .collect();
        line.push_str(&format!("; draining {}", each.join("; ")));
    }
    if status.handover_waiting {
        line.push_str("; a hand-over waits for a generation to exit");
    }
    line
}

fn serving_line(status: &Status) -> String {
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

/// A worker's private sd_notify socket; the socket file is removed when dropped.
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// How many foreign senders are named in the log, each once; more are ignored silently.
const NAMED_SENDERS: usize = 64;

/// How far up the parent chain a sender is followed to find the worker.
const ANCESTRY_DEPTH: usize = 64;

impl NotifySocket {
    /// Binds a datagram socket at `path` (replacing a stale one), owner-only, that receives its
    /// senders' credentials.
    pub(crate) fn bind(path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let guard = Self { socket, path };
        {
            use std::os::unix::fs::PermissionsExt;
            let owner_only = std::fs::Permissions::from_mode(0o600);
            if let Err(e) = std::fs::set_permissions(&guard.path, owner_only) {
                tracing::debug!(path = %guard.path.display(), error = %e, "cannot make the notify socket owner-only");
            }
        }
        socket2::SockRef::from(&guard.socket).set_passcred(true)?;
        guard.socket.set_nonblocking(true)?;
        Ok(guard)
    }

    /// Where the socket is (the worker's `NOTIFY_SOCKET`).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and drops whatever arrives (a `READY=1` sent after the worker was seen accepting,
    /// `STATUS=` lines), so the worker's sends neither fail nor block; never completes.
    pub(crate) async fn discard(&self) {
        let Ok(socket) = self
            .socket
            .try_clone()
            .and_then(tokio::net::UnixDatagram::from_std)
        else {
            return std::future::pending().await;
        };
        let mut buffer = vec![0u8; 4096];
        while socket.recv(&mut buffer).await.is_ok() {}
        std::future::pending().await
    }

    /// Completes on the first `READY=1` from `worker` or a process below it; never completes
    /// when the socket fails.
    pub(crate) async fn ready(&self, worker: u32) {
        let Ok(socket) = self
            .socket
            .try_clone()
            .and_then(tokio::net::UnixDatagram::from_std)
        else {
            return std::future::pending().await;
        };
        let mut named: HashSet<Sender> = HashSet::new();
        let mut buffer = vec![0u8; 4096];
        loop {
            let received = socket
                .async_io(Interest::READABLE, || {
                    crate::sys::receive_with_sender(socket.as_fd(), &mut buffer)
                })
                .await;
            let (length, sender) = match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the worker's notify socket");
                    return std::future::pending().await;
                }
            };
            let from_worker = sender.is_some_and(|s| in_process_tree(s.pid, worker));
            if !from_worker {
                let sender = sender.unwrap_or(Sender {
                    pid: 0,
                    uid: u32::MAX,
                });
                if named.len() < NAMED_SENDERS && named.insert(sender) {
                    tracing::warn!(
                        worker_pid = worker,
                        sender_pid = sender.pid,
                        sender_uid = sender.uid,
                        path = %self.path.display(),
                        "ignoring a notify message from a process outside the worker's process tree"
                    );
                }
                continue;
            }
            let text = String::from_utf8_lossy(&buffer[..length]);
            if text.lines().any(|line| line.trim() == "READY=1") {
                return;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `pid` is `root` or a descendant of it, following parents through `/proc`. Unknown
/// (pid 0: outside this PID namespace) and vanished processes are not.
fn in_process_tree(pid: u32, root: u32) -> bool {
    let mut current = pid;
    for _ in 0..ANCESTRY_DEPTH {
        if current == root {
            return true;
        }
        match parent_of(current) {
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// The parent of `pid`, from the fourth field of `/proc/<pid>/stat` (after the command name,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    parent_in_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_in_its_own_tree_and_its_children_are_too() {
        let me = std::process::id();
        assert!(in_process_tree(me, me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let in_tree = in_process_tree(child.id(), me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(in_tree);
    }

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_in_stat("4242 (a) b (c)) S 17 4242 4242 0"), Some(17));
        assert_eq!(parent_in_stat("4242 (sh"), None);
    }

    #[test]
    fn a_datagram_carries_its_senders_pid_and_uid() {
        let dir = tempfile::tempdir().unwrap();
        let socket = NotifySocket::bind(dir.path().join("n.sock")).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1", socket.path()).unwrap();
        let mut buffer = [0u8; 64];
        let (length, from) =
            crate::sys::receive_with_sender(socket.socket.as_fd(), &mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"READY=1");
        let me = Sender {
            pid: std::process::id(),
            uid: crate::sys::effective_uid(),
        };
        assert_eq!(from, Some(me));
        drop(socket);
        assert!(!dir.path().join("n.sock").exists(), "removed on drop");
    }

    #[test]
    fn parents_and_strangers_are_not_in_the_tree() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        assert!(!in_process_tree(parent, me));
        assert!(!in_process_tree(1, me));
        assert!(!in_process_tree(0, me));
        assert!(!in_process_tree(u32::MAX, me));
    }

    #[test]
    fn the_status_line_shows_each_draining_generation_and_a_waiting_hand_over() {
        let worker = |id: u64, pid: u32, open: Option<u64>| super::super::status::WorkerInfo {
            id,
            pid,
            sha256: "ab".repeat(32),
            started_at: std::time::SystemTime::now(),
            open_connections: open,
            drain_deadline: open
                .map(|_| std::time::SystemTime::now() + std::time::Duration::from_secs(90)),
        };
        let status = Status {
            phase: Phase::Draining,
            master_pid: 1,
            binary: "app".into(),
            version: None,
            started_at: std::time::SystemTime::now(),
            worker: Some(worker(4, 40, None)),
            starting: None,
            draining: vec![worker(2, 20, Some(1)), worker(3, 30, Some(12))],
            handover_waiting: true,
            handovers: 3,
            failed_handovers: 0,
            crashes: 0,
            upgrade: Default::default(),
            master: Default::default(),
        };
        let line = status_line(&status);
        assert!(line.starts_with("draining: worker 4 (pid 40"), "{line}");
        assert!(
            line.contains("; draining worker 2 (pid 20): 1 connection open, 1m 30s left; worker 3 (pid 30): 12 connections open, 1m 30s left"),
            "{line}"
        );
        assert!(
            line.ends_with("; a hand-over waits for a generation to exit"),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
