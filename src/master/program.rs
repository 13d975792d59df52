//! Workers that are any program, not built on this library (`handover run -- PROGRAM`).
//!
//! The program gets its sockets by systemd's socket-activation protocol: fds 3, 4, … with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` equal to its own PID. `LISTEN_PID` can only
//! be known after the fork, so the master starts its own executable in a tiny exec shim
//! (`handover __exec`) that sets it and then execs the program, keeping the PID.
//!
//! Readiness, the first that happens: `READY=1` on the `NOTIFY_SOCKET` the master gives each
//! worker (the sd_notify protocol, accepted only from the worker's own process tree: see
//! [`super::notify`]), or, in `auto` mode, a thread of the program seen waiting to accept on
//! one of the listeners (from `/proc`: blocked in `accept`, in `poll`/`ppoll`/`select`/
//! `pselect6` with a listener in the read set, which the master reads from the program's
//! memory, or holding a listener in an epoll set), or the configured delay.
//!
//! The notify sockets live in the runtime directory: `$RUNTIME_DIRECTORY` when the service
//! manager made one (systemd's `RuntimeDirectory=`; the first of several), which must be owned
//! by the master's user and writable by nobody else, or else a fresh directory with a random
//! name under `$XDG_RUNTIME_DIR` (or the temporary directory), mode 0700, created by the master
//! (never one that already exists) and removed when it exits.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::notify::NotifySocket;
use super::Event;
use crate::error::Error;
use crate::protocol::Message;

use crate::config::{ProgramConfig, ReadyMode};

/// The any-program protocol, as the spawner uses it.
#[derive(Debug, Clone)]
pub(crate) struct ProgramProtocol {
    pub(crate) shim: PathBuf,
    pub(crate) config: ProgramConfig,
    pub(crate) drain_signal: i32,
    pub(crate) runtime_dir: Arc<RuntimeDir>,
}

impl ProgramProtocol {
    pub(crate) fn new(config: ProgramConfig) -> crate::error::Result<Self> {
        let shim = std::env::current_exe()
            .map_err(|e| crate::error::Error::io("locating the handover executable", e))?;
        let drain_signal =
            crate::signals::signal_number(&config.drain_signal).ok_or_else(|| {
                crate::error::Error::config(
                    "program.drain_signal",
                    format!("unknown signal {:?}", config.drain_signal),
                )
            })?;
        let runtime_dir = Arc::new(RuntimeDir::new()?);
        tracing::debug!(path = %runtime_dir.path.display(), "runtime directory");
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
        // The master's PID in the name: a `$RUNTIME_DIRECTORY` may outlive one master.
        let name = format!("notify-{}-{id}.sock", std::process::id());
        let socket = NotifySocket::bind(self.runtime_dir.path.join(name))?;
        command
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("NOTIFY_SOCKET", socket.path())
            .env("HANDOVER_WORKER_ID", id.to_string());
        Ok(socket)
    }

    /// Watches a started worker for readiness and reports it as a `ready` control message.
    pub(crate) fn watch_readiness(
        &self,
        id: u64,
        pid: u32,
        notify: NotifySocket,
        listener_inodes: Vec<u64>,
        events: mpsc::UnboundedSender<Event>,
        exited: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mode = self.config.ready;
        let delay = self.config.ready_delay;
        tokio::spawn(async move {
            let ready = async {
                match mode {
                    ReadyMode::Notify => notify.ready(pid).await,
                    ReadyMode::Accepting => accepting(pid, &listener_inodes).await,
                    ReadyMode::Delay => tokio::time::sleep(delay).await,
                    ReadyMode::Auto => {
                        tokio::select! {
                            _ = notify.ready(pid) => {}
                            _ = accepting(pid, &listener_inodes) => {}
                        }
                    }
                }
            };
            let exited = async {
                let _ = exited.await;
            };
            tokio::pin!(exited);
            tokio::select! {
                _ = ready => {}
                _ = &mut exited => return,
            }
            let _ = events.send(Event::Control {
                worker: id,
                message: Message::Ready,
            });
            // The socket stays, read and emptied, as long as the worker lives: a program seen
            // accepting before it says `READY=1` must not find the socket gone when it does.
            tokio::select! {
                _ = notify.discard() => {}
                _ = exited => {}
            }
            drop(notify);
        });
    }
}

/// The hidden subcommand of the exec shim.
pub(crate) const EXEC_SHIM: &str = "__exec";

/// Where the workers' notify sockets live (see the module docs).
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    path: PathBuf,
    /// Made by this master, which removes it; `$RUNTIME_DIRECTORY` belongs to the service.
    made_here: bool,
}

impl RuntimeDir {
    fn new() -> crate::error::Result<Self> {
        if let Some(path) = service_runtime_directory() {
            check_private(&path)?;
            return Ok(Self {
                path,
                made_here: false,
            });
        }
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Ok(Self {
            path: make_private_dir(&base)?,
            made_here: true,
        })
    }
}

impl RuntimeDir {
    /// The directory, when this master made it (and the next one may remove it).
    pub(crate) fn made_here(&self) -> Option<PathBuf> {
        self.made_here.then(|| self.path.clone())
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.made_here {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the runtime directory");
            }
        }
    }
}

/// The first path of `$RUNTIME_DIRECTORY` (systemd sets one per `RuntimeDirectory=` entry,
/// separated by colons).
fn service_runtime_directory() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let value = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = value.as_bytes().split(|&b| b == b':').next()?;
    (!first.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(first)))
}

/// Refuses a `$RUNTIME_DIRECTORY` that another user could reach into: not a directory, owned
/// by another user, or writable by its group or by everyone.
fn check_private(path: &Path) -> crate::error::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        Error::config(
            "RUNTIME_DIRECTORY",
            format!(
                "refusing {}: {why}; the workers' notify sockets go there, so it must be owned by \
                 this user and writable by nobody else",
                path.display()
            ),
        )
    };
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let metadata = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if !metadata.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    let me = crate::sys::effective_uid();
    if metadata.uid() != me {
        return Err(refuse(format!(
            "owned by uid {}, not by uid {me} that handover runs as",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(refuse(format!("mode {mode:04o} lets {who} write into it")));
    }
    Ok(())
}

/// Makes a new directory with a random name in `base`, mode 0700. `mkdir` fails on any existing
/// entry (a directory, a file, a symlink), and then another name is drawn: a directory someone
/// else prepared is never used.
fn make_private_dir(base: &Path) -> crate::error::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let context = || format!("creating a private runtime directory in {}", base.display());
    for _ in 0..32 {
        let mut random = [0u8; 12];
        getrandom::fill(&mut random)
            .map_err(|e| Error::io(context(), io::Error::other(e.to_string())))?;
        let path = base.join(format!("handover-{}", hex::encode(random)));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                // The umask may have taken bits from the owner; nobody else has any.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| Error::io(context(), e))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(context(), e)),
        }
    }
    Err(Error::io(
        context(),
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "32 random names were all taken",
        ),
    ))
}

/// Completes once a thread of `pid` waits for a listener: in `accept`/`accept4` on it, in
/// `poll`/`ppoll`/`select`/`pselect6` with it among the descriptors watched for reading, or
/// with it in one of its epoll sets. The program is accepting connections.
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
    // A thread blocked in accept/accept4 on a listener, or in poll/ppoll/select/pselect6 with
    // a listener among the descriptors it watches for reading.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(syscall) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue;
            };
            if waits_on_listener(pid, &syscall, &listener_fds) {
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

/// System calls a thread of a ready server waits in, by number (`/proc/<pid>/task/*/syscall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// `accept`, `accept4`: the first argument is the descriptor.
    Accept,
    /// `poll`, `ppoll`: an array of `struct pollfd` and its length.
    Poll,
    /// `select`, `pselect6`: `nfds`, then the read set.
    Select,
}

#[cfg(target_arch = "x86_64")]
const WAITS: [(u64, Wait); 6] = [
    (43, Wait::Accept),
    (288, Wait::Accept),
    (7, Wait::Poll),
    (271, Wait::Poll),
    (23, Wait::Select),
    (270, Wait::Select),
];
// aarch64 has no accept-less poll or select: only ppoll and pselect6.
#[cfg(target_arch = "aarch64")]
const WAITS: [(u64, Wait); 4] = [
    (202, Wait::Accept),
    (242, Wait::Accept),
    (73, Wait::Poll),
    (72, Wait::Select),
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const WAITS: [(u64, Wait); 0] = [];

/// Whether the thread whose `/proc/.../syscall` line is `syscall` waits on one of
/// `listener_fds`: in accept, or in poll/select with a listener in the read set, which is read
/// from the process's memory (`/proc/<pid>/mem`, open to the parent).
fn waits_on_listener(pid: u32, syscall: &str, listener_fds: &[u64]) -> bool {
    let mut words = syscall.split_whitespace();
    let Some(number) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
        return false;
    };
    let Some(&(_, wait)) = WAITS.iter().find(|(n, _)| *n == number) else {
        return false;
    };
    let args: Vec<u64> = words
        .take(3)
        .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect();
    let [first, second, _] = args[..] else {
        return false;
    };
    match wait {
        Wait::Accept => listener_fds.contains(&first),
        Wait::Poll => {
            // struct pollfd { int fd; short events; short revents; }: 8 bytes each.
            let count = second.min(4096);
            let Some(bytes) = read_memory(pid, first, count * 8) else {
                return false;
            };
            bytes.chunks_exact(8).any(|entry| {
                let fd = i32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let events = i16::from_ne_bytes([entry[4], entry[5]]);
                fd >= 0
                    && events & (libc::POLLIN | libc::POLLPRI) != 0
                    && listener_fds.contains(&(fd as u64))
            })
        }
        Wait::Select => {
            let nfds = first.min(libc::FD_SETSIZE as u64);
            // The read set: a bitmap of `nfds` bits in longs.
            let Some(bits) = read_memory(pid, second, nfds.div_ceil(64) * 8) else {
                return false;
            };
            listener_fds.iter().any(|&fd| {
                fd < nfds
                    && bits
                        .get((fd / 8) as usize)
                        .is_some_and(|b| b & (1 << (fd % 8)) != 0)
            })
        }
    }
}

/// `length` bytes of process `pid`'s memory at `address`.
fn read_memory(pid: u32, address: u64, length: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    if address == 0 || length == 0 {
        return None;
    }
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buffer = vec![0u8; length as usize];
    mem.read_exact_at(&mut buffer, address).ok()?;
    Some(buffer)
}

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
