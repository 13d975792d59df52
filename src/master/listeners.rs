//! Where the master binds its sockets, once, for its whole life; or adopts the ones systemd
//! passed by socket activation.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::Listen;
use crate::error::{Error, Result};

const DEFAULT_BACKLOG: u32 = 1024;

/// A socket the master holds and passes to every worker.
#[derive(Debug)]
pub(crate) struct BoundListener {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    /// A Unix socket file we created: removed at final stop if it is still ours.
    pub(crate) unix_file: Option<(PathBuf, u64)>,
    /// Passed by systemd (kept across master upgrades whatever the config says).
    pub(crate) activated: bool,
}

impl BoundListener {
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The socket's inode, as `/proc/<pid>/fd` shows it (`socket:[N]`).
    pub(crate) fn inode(&self) -> Option<u64> {
        let fd = self.fd.as_raw_fd();
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .ok()?
            .to_string_lossy()
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }

    /// Removes the Unix socket file, if this master created it and nobody replaced it since.
    pub(crate) fn remove_socket_file(&self) {
        if let Some((path, inode)) = &self.unix_file {
            if std::fs::symlink_metadata(path)
                .map(|m| m.ino() == *inode)
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds every configured listener, adopting systemd-activated sockets by name first.
pub(crate) fn bind_all(config: &[Listen]) -> Result<Vec<BoundListener>> {
    let mut activated = systemd_activated()?;
    let mut bound = Vec::with_capacity(config.len());
    for listen in config {
        if let Some(index) = activated.iter().position(|(name, _)| name == &listen.name) {
            let (name, fd) = activated.remove(index);
            tracing::info!(listener = %name, "adopted socket from systemd");
            bound.push(BoundListener {
                name,
                fd,
                unix_file: None,
                activated: true,
            });
            continue;
        }
        bound.push(bind_one(listen)?);
    }
    // Activated sockets the config does not name are still passed on, under systemd's name.
    for (name, fd) in activated {
        tracing::info!(listener = %name, "adopted unnamed socket from systemd");
        bound.push(BoundListener {
            name,
            fd,
            unix_file: None,
            activated: true,
        });
    }
    Ok(bound)
}

fn bind_one(listen: &Listen) -> Result<BoundListener> {
    let backlog = listen
        .backlog
        .unwrap_or(DEFAULT_BACKLOG)
        .min(i32::MAX as u32) as i32;
    let describe = listen.describe();
    let bind_err = |source: io::Error| Error::Bind {
        address: describe.clone(),
        source,
    };
    let (socket, unix_file) = if let Some(address) = listen.tcp {
        let socket =
            Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(bind_err)?;
        socket.set_reuse_address(true).map_err(bind_err)?;
        socket.bind(&address.into()).map_err(bind_err)?;
        socket.listen(backlog).map_err(bind_err)?;
        (socket, None)
    } else if let Some(address) = listen.udp {
        let socket =
            Socket::new(Domain::for_address(address), Type::DGRAM, None).map_err(bind_err)?;
        socket.bind(&address.into()).map_err(bind_err)?;
        (socket, None)
    } else if let Some(path) = &listen.unix {
        remove_stale_socket(path).map_err(bind_err)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(bind_err)?;
        socket
            .bind(&SockAddr::unix(path).map_err(bind_err)?)
            .map_err(bind_err)?;
        if let Some(mode) = listen.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(bind_err)?;
        }
        socket.listen(backlog).map_err(bind_err)?;
        let inode = std::fs::symlink_metadata(path).map_err(bind_err)?.ino();
        (socket, Some((path.clone(), inode)))
    } else {
        return Err(Error::config(
            "listen",
            format!("{:?} has no address", listen.name),
        ));
    };
    tracing::info!(listener = %listen.name, address = %describe, "bound");
    Ok(BoundListener {
        name: listen.name.clone(),
        fd: socket.into(),
        unix_file,
        activated: false,
    })
}

/// A listener the previous master passed across its re-exec.
pub(crate) struct Inherited {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    pub(crate) unix_file: Option<(PathBuf, u64)>,
    pub(crate) activated: bool,
}

/// After a master upgrade: the inherited sockets that the (possibly changed) config still
/// names at the same address are kept as they are; new ones are bound (a failure is logged, as
/// the previous master is gone); ones no longer named are closed here (the serving worker
/// keeps its copy until it drains). Returns the listeners in config order and whether the set
/// changed (then workers need a hand-over to get the new set).
pub(crate) fn adopt_all(
    config: &[Listen],
    inherited: Vec<Inherited>,
) -> (Vec<BoundListener>, bool) {
    let mut inherited = inherited;
    let mut bound = Vec::with_capacity(config.len());
    let mut changed = false;
    for listen in config {
        let same = inherited
            .iter()
            .position(|i| i.name == listen.name && same_address(i, listen));
        if let Some(index) = same {
            let i = inherited.remove(index);
            bound.push(BoundListener {
                name: i.name,
                fd: i.fd,
                unix_file: i.unix_file,
                activated: i.activated,
            });
            continue;
        }
        changed = true;
        if let Some(index) = inherited.iter().position(|i| i.name == listen.name) {
            let old = inherited.remove(index);
            tracing::info!(listener = %old.name, address = %listen.describe(), "listener's address changed in the config: binding the new one");
            close_inherited(old);
        }
        match bind_one(listen) {
            Ok(listener) => bound.push(listener),
            Err(error) => {
                tracing::error!(listener = %listen.name, %error, "cannot bind a listener added to the config; serving without it")
            }
        }
    }
    for i in inherited {
        if i.activated {
            bound.push(BoundListener {
                name: i.name,
                fd: i.fd,
                unix_file: None,
                activated: true,
            });
        } else {
            changed = true;
            tracing::info!(listener = %i.name, "listener removed from the config: closed; the serving worker keeps it until it drains");
            close_inherited(i);
        }
    }
    (bound, changed)
}

fn close_inherited(old: Inherited) {
    BoundListener {
        name: old.name,
        fd: old.fd,
        unix_file: old.unix_file,
        activated: old.activated,
    }
    .remove_socket_file();
}

/// Whether an inherited socket is bound where `listen` says.
fn same_address(inherited: &Inherited, listen: &Listen) -> bool {
    let local = socket2::SockRef::from(&inherited.fd).local_addr().ok();
    if let Some(address) = listen.tcp.or(listen.udp) {
        let local = local.and_then(|l| l.as_socket());
        let any_port = address.port() == 0 && local.is_some_and(|l| l.ip() == address.ip());
        return local == Some(address) || any_port || inherited.activated;
    }
    match (&listen.unix, &inherited.unix_file) {
        (Some(path), Some((file, _))) => path == file,
        (Some(_), None) => inherited.activated,
        _ => false,
    }
}

/// A socket file left by a process that died is removed; one that still answers, or a file that
/// is not a socket, is an error rather than something to delete.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket; not replacing it",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on it",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing stale socket file");
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

/// Sockets passed by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`),
/// addressed to this process. The variables are removed so no child mistakes them for its own.
fn systemd_activated() -> Result<Vec<(String, OwnedFd)>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (true, Some(count)) = (pid_matches, count) else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            let fd = crate::protocol::FIRST_FD + i;
            let owned = crate::sys::adopt_inherited_fd(fd).map_err(|e| Error::Bind {
                address: format!("systemd socket fd {fd}"),
                source: e,
            })?;
            if socket2::SockRef::from(&owned).r#type().is_err() {
                return Err(Error::Bind {
                    address: format!("systemd socket fd {fd}"),
                    source: std::io::Error::other("LISTEN_FDS names it, but it is not a socket"),
                });
            }
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("fd{fd}"));
            Ok((name, owned))
        })
        .collect()
}
