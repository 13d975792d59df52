//! Every `unsafe` block of the crate: descriptor plumbing between fork and exec, adopting
//! descriptors inherited from the master or from systemd, and (in [`memory`]) the master's
//! memory housekeeping.

mod memory;

pub(crate) use memory::{limit_malloc_arenas, trim_resident};

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// How a child is set up between fork and exec.
pub(crate) struct ChildSetup {
    /// Descriptors to pass, in order: the i-th lands at fd `3 + i`.
    pub(crate) pass: Vec<RawFd>,
    /// Signal the child receives when the master dies.
    pub(crate) parent_death_signal: i32,
    /// The master's PID, to detect that it died before the death signal was armed.
    pub(crate) master_pid: i32,
}

/// Arranges for `command` to receive `setup.pass` at fds 3, 4, … in its own process group, with
/// a parent-death signal.
pub(crate) fn prepare_child(command: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        pass,
        parent_death_signal,
        master_pid,
    } = setup;
    // Allocated here, before the fork: the closure below must not allocate.
    let mut moved: Vec<RawFd> = vec![-1; pass.len()];
    let floor = super::protocol::FIRST_FD + pass.len() as RawFd;
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let no_signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: fcntl, dup2, setpgid, sigprocmask, prctl,
        // getppid.
        for (slot, &fd) in moved.iter_mut().zip(&pass) {
            // First lift every descriptor above the target range, so that placing one cannot
            // overwrite another that is still to be placed.
            // SAFETY: fcntl on a descriptor the master owns and keeps open across the spawn.
            let lifted = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
            if lifted < 0 {
                return Err(io::Error::last_os_error());
            }
            *slot = lifted;
        }
        for (index, &fd) in moved.iter().enumerate() {
            let target = super::protocol::FIRST_FD + index as RawFd;
            // dup2 clears close-on-exec on the target, which is what passes it on; the lifted
            // copy keeps it and disappears at exec.
            // SAFETY: both descriptors are valid; the target number is free or ours to replace.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // A process group of its own: a Ctrl-C at the terminal reaches only the master, which
        // then drains the workers in order instead of having them all die at once.
        // SAFETY: setpgid(0, 0) acts on the calling (child) process only.
        if unsafe { libc::setpgid(0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // A worker starts with no signal blocked, whatever the master's mask (it blocks its
        // signals across its own re-exec).
        // SAFETY: sigprocmask is async-signal-safe; `no_signals` is an initialised set.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &no_signals, std::ptr::null_mut()) };
        arm_parent_death_signal(parent_death_signal, master_pid)
    };
    // SAFETY: the hook only makes async-signal-safe system calls and does not allocate.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Arranges for a short-lived helper (the `pre_upgrade` hook) to be killed if the master dies
/// while it runs: it would otherwise be orphaned.
pub(crate) fn die_with_master(command: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let master_pid = unsafe { libc::getpid() };
    // SAFETY: the hook only makes async-signal-safe system calls and does not allocate.
    unsafe {
        command.pre_exec(move || arm_parent_death_signal(libc::SIGKILL, master_pid));
    }
}

/// A command that runs the candidate binary at `path` with `args`, and `env` added to this
/// process's environment (less the secrets children never see, see [`crate::child_env`]), and
/// that dies with the master (a candidate that hangs in its sanity
/// run must not outlive it).
///
/// The candidate is exec'd with `execve` from the pre-exec hook. With any hook, std starts the
/// child with fork and `execvp`, and `execvp` hands a file the kernel refuses to run (random
/// bytes, another architecture) to `/bin/sh` instead of failing with "exec format error": an
/// untrusted candidate must never be run as a shell script by accident.
pub(crate) fn candidate_command(
    path: &Path,
    args: &[&OsStr],
    env: &[(&str, &OsStr)],
) -> io::Result<Command> {
    let c_string = |bytes: Vec<u8>| {
        CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
    };
    let program = c_string(path.as_os_str().as_bytes().to_vec())?;
    let mut argv = vec![program.clone()];
    for arg in args {
        argv.push(c_string(arg.as_bytes().to_vec())?);
    }
    let mut variables: BTreeMap<OsString, OsString> =
        crate::child_env::inherited().into_iter().collect();
    for (key, value) in env {
        variables.insert(OsString::from(key), OsString::from(value));
    }
    let envp = variables
        .iter()
        .map(|(key, value)| c_string([key.as_bytes(), b"=", value.as_bytes()].concat()))
        .collect::<io::Result<Vec<CString>>>()?;
    // Null-terminated pointer arrays, built before the fork (the child must not allocate). Held
    // as addresses so the hook stays Send + Sync; the strings they point into move with it.
    let addresses = |strings: &[CString]| -> Vec<usize> {
        strings
            .iter()
            .map(|s| s.as_ptr() as usize)
            .chain(std::iter::once(0))
            .collect()
    };
    let (argv_addresses, envp_addresses) = (addresses(&argv), addresses(&envp));

    let mut command = Command::new(path);
    command.args(args);
    crate::child_env::scrub(&mut command);
    for (key, value) in env {
        command.env(key, value);
    }
    // SAFETY: getpid has no preconditions.
    let master_pid = unsafe { libc::getpid() };
    let hook = move || -> io::Result<()> {
        arm_parent_death_signal(libc::SIGKILL, master_pid)?;
        let _keep_alive = (&argv, &envp);
        // SAFETY: `program` and every string the address arrays point into are owned by this
        // closure and alive; both arrays end with a null pointer (0), and usize has the size
        // and alignment of a pointer. execve only returns on failure.
        unsafe {
            libc::execve(
                program.as_ptr(),
                argv_addresses.as_ptr().cast::<*const libc::c_char>(),
                envp_addresses.as_ptr().cast::<*const libc::c_char>(),
            )
        };
        Err(io::Error::last_os_error())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (prctl, getppid, execve) and
    // does not allocate.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(command)
}

/// In a forked child: `signal` when the parent dies. Async-signal-safe.
fn arm_parent_death_signal(signal: i32, master_pid: i32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling process.
    #[cfg(target_os = "linux")]
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != master_pid {
        // The master died between fork and prctl: the death signal will never come. (A raw
        // errno: building a message would allocate, which a forked child must not.)
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let _ = signal;
    Ok(())
}

/// Takes ownership of a descriptor this process inherited at exec (from the master or from
/// systemd), after checking it is open, and marks it close-on-exec so it does not leak into
/// the program's own children.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::other(format!("invalid descriptor {fd}")));
    }
    // SAFETY: F_GETFD only queries flags; a closed fd gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is not open: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the descriptor is open, was handed to this process at exec for it to own, and
    // each inherited number is adopted once (the callers read it from the environment once and
    // remove the variable).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we now own.
    if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Sends `signal` to every process of the group `pgid` (a worker and what it started: each
/// worker leads a group of its own).
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    if unsafe { libc::kill(-(pgid as libc::pid_t), signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether any process of the group `pgid` is left.
pub(crate) fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks that the group exists and may be signalled.
    let result = unsafe { libc::kill(-(pgid as libc::pid_t), 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's effective user id.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The sender of a datagram, as the kernel reports it (`SCM_CREDENTIALS`). `pid` is 0 when the
/// sender's process is not visible in this process's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Sender {
    /// The sending process.
    pub(crate) pid: u32,
    /// Its user id.
    pub(crate) uid: u32,
}

/// Receives one datagram from `socket` without blocking, with its sender's credentials (`None`
/// when none are attached: the socket needs `SO_PASSCRED`).
///
/// By hand rather than through rustix: rustix's `UCred` holds a non-zero `Pid`, and the kernel
/// reports pid 0 for a sender outside this PID namespace, which would make reading it undefined
/// behaviour.
pub(crate) fn receive_with_sender(
    socket: std::os::fd::BorrowedFd<'_>,
    buffer: &mut [u8],
) -> io::Result<(usize, Option<Sender>)> {
    const CREDENTIALS: libc::c_uint = std::mem::size_of::<libc::ucred>() as libc::c_uint;
    // Room for the credentials and nothing else: descriptors a sender attaches do not fit, so
    // the kernel closes them instead of installing them here. u64s align the buffer for cmsghdr.
    // SAFETY: CMSG_SPACE only computes a size.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(CREDENTIALS) } as usize;
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: msghdr is plain data (integers and pointers); all zeroes is an empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = SPACE as _;
    // SAFETY: `iov` points into `buffer` with its length and `msg_control` into `control` with
    // SPACE bytes (no more than its size); both outlive the call.
    let received = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut header,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sender = None;
    // SAFETY: `header` was filled in by recvmsg; CMSG_FIRSTHDR and CMSG_NXTHDR return null or a
    // header that lies whole inside `control` (which is aligned for cmsghdr).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
    while !cmsg.is_null() {
        // SAFETY: see above: a valid, aligned header inside `control`.
        let (level, kind, reported) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        // `cmsg_len` is a usize with glibc and a u32 with musl.
        #[allow(clippy::unnecessary_cast)]
        let reported = reported as usize;
        // What the kernel wrote from this header on: a length never reaches past it.
        let offset = cmsg as usize - control.as_ptr() as usize;
        #[allow(clippy::unnecessary_cast)]
        let written = (header.msg_controllen as usize).min(SPACE);
        let length = reported.min(written.saturating_sub(offset));
        // SAFETY: CMSG_LEN only computes a size.
        let wanted = unsafe { libc::CMSG_LEN(CREDENTIALS) } as usize;
        if level == libc::SOL_SOCKET && kind == libc::SCM_CREDENTIALS && length >= wanted {
            // SAFETY: the payload holds a whole ucred (`length`, bounded by what was written,
            // covers it); read_unaligned has no alignment requirement, and any bit pattern is a
            // valid ucred (three integers).
            let credentials =
                unsafe { libc::CMSG_DATA(cmsg).cast::<libc::ucred>().read_unaligned() };
            sender = Some(Sender {
                pid: u32::try_from(credentials.pid).unwrap_or(0),
                uid: credentials.uid,
            });
        } else if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // Should a kernel ever fit descriptors in anyway: close them, never keep them.
            // SAFETY: CMSG_LEN only computes a size.
            let header_length = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = length.saturating_sub(header_length) / size_of::<RawFd>();
            for index in 0..count {
                // SAFETY: the payload holds `count` descriptors (within what was written), just
                // installed in this process for this message and owned by nobody else; each is
                // adopted once and closed on drop.
                drop(unsafe {
                    let fd = libc::CMSG_DATA(cmsg)
                        .cast::<RawFd>()
                        .add(index)
                        .read_unaligned();
                    OwnedFd::from_raw_fd(fd)
                });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; `cmsg` is a header inside this message.
        cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
    }
    Ok((received as usize, sender))
}

/// The signals a master handles, blocked across its own re-exec so that one arriving while the
/// new code starts is held pending (the mask and pending signals survive `execve`) instead of
/// meeting the default action; the new master unblocks them once its handlers are installed.
const MASTER_SIGNALS: [i32; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

fn master_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use, and
    // sigaddset only sets bits of valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in MASTER_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Unblocks the master's signals (blocked by the master that exec'd this one, if any).
pub(crate) fn unblock_master_signals() {
    let set = master_signal_set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// A sealed anonymous file (`memfd`) holding `bytes`: nobody can change it once written.
/// Close-on-exec, like every descriptor until [`exec_keeping`] passes it.
pub(crate) fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Write;
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in a memfd name"))?;
    // SAFETY: `name` is a valid C string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this new descriptor, owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on a memfd made with MFD_ALLOW_SEALING that we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and change the descriptor's flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Replaces this process's code with `path` (same PID, same children), keeping exactly the
/// descriptors in `keep` open across this one exec, with the master's signals blocked. Returns
/// only on failure, with everything as it was before (close-on-exec set again, signals
/// unblocked). Must be called on the thread that started the workers (their parent-death
/// signal is tied to it).
pub(crate) fn exec_keeping(
    path: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    keep: &[RawFd],
) -> io::Error {
    let c_string = |bytes: &[u8]| CString::new(bytes).map_err(|_| io::Error::other("NUL byte"));
    let prepared = (|| -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let program = c_string(path.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| c_string(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok((program, argv, envp))
    })();
    let (program, argv, envp) = match prepared {
        Ok(p) => p,
        Err(e) => return e,
    };
    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
    let mut cleared = Vec::with_capacity(keep.len());
    for &fd in keep {
        if let Err(e) = set_cloexec(fd, false) {
            for &done in &cleared {
                let _ = set_cloexec(done, true);
            }
            return e;
        }
        cleared.push(fd);
    }
    let set = master_signal_set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: `program`, `argv` and `envp` own the strings the null-terminated pointer arrays
    // point into, and all outlive the call; execve only returns on failure.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let error = io::Error::last_os_error();
    for &fd in &cleared {
        let _ = set_cloexec(fd, true);
    }
    unblock_master_signals();
    error
}

/// A descriptor that becomes readable when process `pid` (a child of ours) exits, registered
/// with the tokio reactor. Must be called within the runtime.
pub(crate) fn exit_watch(pid: u32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor, owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open, and always returns the same
    // descriptor, until the AsyncFd is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Reaps child `pid` if it has exited (`None` while it runs).
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid on a child of this process, with a valid pointer to an int.
    let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    match reaped {
        0 => Ok(None),
        r if r < 0 => Err(io::Error::last_os_error()),
        _ => Ok(Some(ExitStatus::from_raw(status))),
    }
}
