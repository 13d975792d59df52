//! Workers that are any program, not built on this library (`handover run -- PROGRAM`).
//!
//! The program gets its sockets by systemd's socket-activation protocol: fds 3, 4, … with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` equal to its own PID. `LISTEN_PID` can only
//! be known after the fork, so the master starts its own executable in a tiny exec shim
//! (`handover __exec`) that sets it and then execs the program, keeping the PID.
//!
//! Readiness, the first that happens: `READY=1` on the `NOTIFY_SOCKET` the master gives each
//! worker (the sd_notify protocol), or, in `auto` mode, a thread of the program seen waiting to
//! accept on one of the listeners (from `/proc`), or the configured delay.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Event;
use crate::protocol::Message;

use crate::config::{ProgramConfig, ReadyMode};

/// The any-program protocol, as the spawner uses it.
#[derive(Debug, Clone)]
pub(crate) struct ProgramProtocol {
    pub(crate) shim: PathBuf,
    pub(crate) config: ProgramConfig,
    pub(crate) drain_signal: i32,
    pub(crate) runtime_dir: PathBuf,
}

impl ProgramProtocol {
    pub(crate) fn new(config: ProgramConfig) -> crate::error::Result<Self> {
        let shim = std::env::current_exe()
            .map_err(|e| crate::error::Error::io("locating the handover executable", e))?;
        let drain_signal = crate::sys::signal_number(&config.drain_signal).ok_or_else(|| {
            crate::error::Error::config(
                "program.drain_signal",
                format!("unknown signal {:?}", config.drain_signal),
            )
        })?;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let runtime_dir = base.join(format!("handover-{}", std::process::id()));
        std::fs::create_dir_all(&runtime_dir).map_err(|e| {
            crate::error::Error::io(format!("creating {}", runtime_dir.display()), e)
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Self {
            shim,
            config,
            drain_signal,
            runtime_dir,
        })
    }

    /// The shim, which sets `LISTEN_PID` and execs `binary`.
    pub(crate) fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(&self.shim);
        command.arg(EXEC_SHIM).arg("--").arg(binary);
        command
    }

    /// Sets the socket-activation variables and a private `NOTIFY_SOCKET`; returns the socket
    /// to read the worker's notifications from.
    pub(crate) fn configure(
        &self,
        command: &mut Command,
        names: &[&str],
        id: u64,
    ) -> io::Result<NotifySocket> {
        let path = self.runtime_dir.join(format!("notify-{id}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path)?;
        command
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("NOTIFY_SOCKET", &path)
            .env("HANDOVER_WORKER_ID", id.to_string());
        Ok(NotifySocket { socket, path })
    }

    /// Watches a started worker for readiness and reports it as a `ready` control message.
    pub(crate) fn watch_readiness(
        &self,
        id: u64,
        pid: u32,
        notify: NotifySocket,
        listener_inodes: Vec<u64>,
        events: mpsc::UnboundedSender<Event>,
    ) {
        let mode = self.config.ready;
        let delay = self.config.ready_delay;
        tokio::spawn(async move {
            let ready = async {
                match mode {
                    ReadyMode::Notify => notify.ready().await,
                    ReadyMode::Accepting => accepting(pid, &listener_inodes).await,
                    ReadyMode::Delay => tokio::time::sleep(delay).await,
                    ReadyMode::Auto => {
                        tokio::select! {
                            _ = notify.ready() => {}
                            _ = accepting(pid, &listener_inodes) => {}
                        }
                    }
                }
            };
            ready.await;
            let _ = events.send(Event::Control {
                worker: id,
                message: Message::Ready,
            });
            drop(notify);
        });
    }
}

/// The hidden subcommand of the exec shim.
pub(crate) const EXEC_SHIM: &str = "__exec";

/// A worker's private sd_notify socket; removed when dropped.
pub(crate) struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    async fn ready(&self) {
        let Ok(socket) = self.socket.try_clone().and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UnixDatagram::from_std(s)
        }) else {
            return std::future::pending().await;
        };
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok(n) = socket.recv(&mut buffer).await else {
                return std::future::pending().await;
            };
            let text = String::from_utf8_lossy(&buffer[..n]);
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

/// Completes once a thread of `pid` waits in `accept`/`accept4` on a listener, or one of its
/// epoll sets holds a listener: the program is accepting connections.
async fn accepting(pid: u32, listener_inodes: &[u64]) {
    loop {
        if is_accepting(pid, listener_inodes) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_accepting(pid: u32, listener_inodes: &[u64]) -> bool {
    // fd number -> socket inode, for the process's listening sockets.
    let mut listener_fds = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if inode.is_some_and(|i| listener_inodes.contains(&i)) {
            if let Ok(n) = fd.file_name().to_string_lossy().parse::<u64>() {
                listener_fds.push(n);
            }
        }
    }
    if listener_fds.is_empty() {
        return false;
    }
    // A thread blocked in accept (43) or accept4 (288) on x86_64 with a listener as first argument.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(syscall) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue;
            };
            let mut words = syscall.split_whitespace();
            let (Some(number), Some(first)) = (words.next(), words.next()) else {
                continue;
            };
            let fd = u64::from_str_radix(first.trim_start_matches("0x"), 16).unwrap_or(u64::MAX);
            if ACCEPT_SYSCALLS.contains(&number) && listener_fds.contains(&fd) {
                return true;
            }
        }
    }
    // An epoll set with a listener registered (`tfd: N` lines in fdinfo).
    if let Ok(infos) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for info in infos.flatten() {
            let Ok(text) = std::fs::read_to_string(info.path()) else {
                continue;
            };
            for line in text.lines().filter(|l| l.starts_with("tfd:")) {
                let fd = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok());
                if fd.is_some_and(|fd| listener_fds.contains(&fd)) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(target_arch = "x86_64")]
const ACCEPT_SYSCALLS: [&str; 2] = ["43", "288"];
#[cfg(target_arch = "aarch64")]
const ACCEPT_SYSCALLS: [&str; 2] = ["202", "242"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ACCEPT_SYSCALLS: [&str; 0] = [];

/// The exec shim: sets `LISTEN_PID` to this process's PID and execs the program. Never returns
/// on success.
pub fn exec_shim(program: &OsString, args: &[OsString]) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut tries = 0;
    loop {
        let error = Command::new(program)
            .args(args)
            .env("LISTEN_PID", std::process::id().to_string())
            .exec();
        // A binary copied into place a moment ago may still be open for writing in a process
        // that forked meanwhile; that clears within milliseconds.
        if error.raw_os_error() != Some(libc::ETXTBSY) || tries == 50 {
            return error;
        }
        tries += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
}
