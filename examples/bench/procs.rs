//! The processes the bench starts (handover masters, wrk), and what it reads about them from
//! `/proc`.
//!
//! Every child is held by a [`Guarded`], which stops it when dropped, also while a panic
//! unwinds. A child is also asked to die with the bench (`PR_SET_PDEATHSIG`), which covers the
//! case no destructor can: the bench being killed outright.

use std::collections::HashSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process that is stopped when dropped: `stop_signal` first (a master then stops its
/// workers itself), `SIGKILL` after `grace`, and then `SIGKILL` for any of its children that
/// outlived it.
pub(crate) struct Guarded {
    child: Child,
    stop_signal: i32,
    grace: Duration,
}

impl Guarded {
    /// Spawns `command`. The child receives `death_signal` when the thread that spawned it
    /// exits, so spawn from the main thread (a helper thread's exit would kill the child).
    pub(crate) fn spawn(
        command: &mut Command,
        death_signal: i32,
        stop_signal: i32,
        grace: Duration,
    ) -> io::Result<Self> {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl is one, and it only changes the child.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        Ok(Self {
            child,
            stop_signal,
            grace,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, if it was piped (once).
    pub(crate) fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The child's stdout, if it was piped (once).
    pub(crate) fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether the process has exited (and been reaped).
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal`, unless the process has already exited (its pid could be reused).
    pub(crate) fn signal(&mut self, signal: i32) -> io::Result<()> {
        if self.exited() {
            return Err(io::Error::other("the process has already exited"));
        }
        send_signal(self.pid(), signal)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exited()
    }

    /// Stops the process as described on [`Guarded`]; idempotent.
    pub(crate) fn stop(&mut self) {
        if self.exited() {
            return;
        }
        // Remember the children now: once the parent is gone they are reparented and lost.
        let children = children(self.pid());
        let _ = send_signal(self.pid(), self.stop_signal);
        if !self.wait_exit(self.grace) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in children {
            if alive(pid) {
                let _ = send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a process this bench started.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces and
/// parentheses, hence the split at the last `)`): index 0 is the state, 1 the parent pid,
/// 11 and 12 utime and stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` runs: it exists and is not a zombie waiting to be reaped.
pub(crate) fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// The live children of `pid`. Reads the per-thread `children` files when the kernel has them
/// (cheap), otherwise scans every process's parent pid.
pub(crate) fn children(pid: u32) -> HashSet<u32> {
    let mut found = HashSet::new();
    let mut have_children_files = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                have_children_files = true;
                found.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    if !have_children_files {
        let parent = pid.to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(candidate) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if stat_fields(candidate).is_some_and(|f| f.get(1) == Some(&parent)) {
                found.insert(candidate);
            }
        }
    }
    found.retain(|p| alive(*p));
    found
}

/// Resident memory in KiB (`VmRSS` in `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The master's memory three ways, in KiB: resident (shared file pages included), its
/// proportional share (`Pss`: pages shared with the worker that runs the same binary count
/// half), and anonymous (its own: heap, stacks, relocated constants).
pub(crate) fn memory_kib(pid: u32) -> Option<(u64, u64, u64)> {
    Some((
        rss_kib(pid)?,
        kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")?,
        kib_field(&format!("/proc/{pid}/status"), "RssAnon:")?,
    ))
}

fn kib_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time used so far (user + system), in seconds; counted in clock ticks
/// ([`ticks_per_second`]).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// The kernel's clock ticks per second (`USER_HZ`), the resolution of [`cpu_seconds`].
pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Whether `pid` runs and its command line contains `name` (so a pid that has been reused by
/// another program is not signalled).
pub(crate) fn runs(pid: u32, name: &str) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(name))
}

/// Raises this process's soft limit on open files to the hard limit (children inherit it);
/// returns the limit now in force.
pub(crate) fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let old = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                limit.rlim_cur = old;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// How many file descriptors `pid` has open.
pub(crate) fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
