//! The control socket against hostile or broken clients: another user, a client that connects
//! and never sends, and a master out of descriptors.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use util::{Options, Service};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// The user the peer-credential test runs the client as (created when missing).
const PEER_USER: &str = "handover-test-peer";

/// How long the master gives a client to send its request (src/control.rs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The hello service with a control socket in a directory of its own.
struct Controlled {
    service: Service,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Controlled {
    fn start() -> Controlled {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let config = format!("control_socket = \"{}\"\n", socket.display());
        let service = Service::serving(Options {
            config: &config,
            ..Default::default()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "no control socket:\n{}",
                service.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Controlled {
            service,
            dir,
            socket,
        }
    }

    /// `handover status` through the socket, as this process's user.
    fn status(&self) -> Output {
        Command::new(HANDOVER)
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// Waits until the master holds exactly `count` descriptors.
    fn wait_fds(&self, count: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while open_fds(self.service.pid()).len() != count {
            assert!(
                Instant::now() < deadline,
                "{what}: the master holds {} descriptors, not {count}:\n{}",
                open_fds(self.service.pid()).len(),
                self.service.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn another_user_is_refused_by_the_socket_mode_and_by_the_peer_credential_check() {
    let control = Controlled::start();
    let mode = std::fs::metadata(&control.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("this test needs root (to create {PEER_USER} and run the client as it); checked the 0600 mode only");
        return;
    }
    let (uid, gid) = test_user();
    // The other user must reach the socket's directory and the client binary, so that only the
    // socket's own mode, then the master's check, stand in its way.
    let client = control.dir.path().join("handover");
    std::fs::copy(HANDOVER, &client).unwrap();
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(control.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let denied = as_user(uid, gid, &client, &control.socket);
    assert!(!denied.status.success(), "{denied:?}");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Permission denied"),
        "connect() itself: {stderr}"
    );

    // With the mode opened up, connect() works and the master's peer-credential check refuses.
    std::fs::set_permissions(&control.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_user(uid, gid, &client, &control.socket);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "permission denied: uid {uid} is neither the master's user (0) nor root"
        )),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("phase:"),
        "{refused:?}"
    );
    let log = control.service.wait_log(
        "control socket: refused a connection from another user",
        Duration::from_secs(5),
    );
    assert!(log.contains(&format!("uid={uid}")), "{log}");
    // The master's own user is still served.
    assert!(control.status().status.success());
}

#[test]
fn a_silent_client_is_disconnected_after_the_timeout_while_others_are_served() {
    let control = Controlled::start();
    let master = control.service.pid();
    let before = open_fds(master).len();
    let connected = Instant::now();
    let mut silent = UnixStream::connect(&control.socket).unwrap();
    control.wait_fds(before + 1, "the silent client accepted");

    let status = control.status();
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("phase: serving"));
    // Served while the silent client is still connected.
    silent.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let still_open = matches!(silent.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    assert!(
        still_open,
        "the silent client was dropped before the timeout"
    );

    silent.set_nonblocking(false).unwrap();
    silent.set_read_timeout(Some(REQUEST_TIMEOUT * 3)).unwrap();
    let mut answer = String::new();
    silent
        .read_to_string(&mut answer)
        .expect("the master never closed the silent connection");
    let waited = connected.elapsed();
    assert_eq!(answer, "error: no request within 5s\n");
    assert!(waited >= REQUEST_TIMEOUT, "closed after {waited:?}");
    control.wait_fds(before, "the silent client's descriptor released");
    control.service.wait_log(
        "control socket: no request within 5s; closing the connection",
        Duration::from_secs(5),
    );
    assert!(control.status().status.success());
}

// regression: an accept that fails (EMFILE) was retried and logged every 100 ms (issue 13).
#[test]
fn out_of_descriptors_the_master_logs_once_backs_off_and_serves_again() {
    let control = Controlled::start();
    let master = control.service.pid();
    // Room for exactly one more descriptor: the lowest free number is the last one allowed.
    let fds = open_fds(master);
    let lowest_free = (0..).find(|n| !fds.contains(n)).unwrap();
    let old = set_open_files_limit(master, lowest_free + 1);

    let mut silent = UnixStream::connect(&control.socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !open_fds(master).contains(&lowest_free) {
        assert!(Instant::now() < deadline, "{}", control.service.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next connection cannot be accepted until the silent one times out and frees its
    // descriptor; meanwhile every accept fails with EMFILE.
    let asked = Instant::now();
    let mut client = UnixStream::connect(&control.socket).unwrap();
    client.write_all(b"status\n").unwrap();
    client.set_read_timeout(Some(REQUEST_TIMEOUT * 4)).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    set_open_files_limit(master, old);
    assert!(answer.starts_with("ok\n"), "{answer}");
    assert!(
        asked.elapsed() >= REQUEST_TIMEOUT / 2,
        "{:?}",
        asked.elapsed()
    );
    let mut gone = String::new();
    let _ = silent.read_to_string(&mut gone);

    let log = control
        .service
        .wait_log("control socket: accepting again", Duration::from_secs(5));
    assert_eq!(
        control.service.log_count("control socket: accept failed"),
        1,
        "{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    let failures: u64 = log
        .lines()
        .find(|l| l.contains("control socket: accepting again"))
        .and_then(|l| l.split("failures=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failure count:\n{log}"));
    // About 5 s of retries every 100 ms; a hot loop would be many thousands.
    assert!((5..=150).contains(&failures), "{failures} failed accepts");
}

/// The uid and gid of [`PEER_USER`], created as a system user without a home when missing.
fn test_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, PEER_USER]).output().unwrap();
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        })
    };
    if id("-u").is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", PEER_USER])
            .output()
            .expect("useradd (passwd package) is needed");
        // Another test run may have created it meanwhile.
        assert!(
            out.status.success() || id("-u").is_some(),
            "useradd {PEER_USER}: {out:?}"
        );
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// `client status --socket socket` as `uid`:`gid`, without supplementary groups.
fn as_user(uid: u32, gid: u32, client: &Path, socket: &Path) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(client)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .expect("setpriv (util-linux) is needed")
}

/// The descriptor numbers `pid` has open.
fn open_fds(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Sets the soft RLIMIT_NOFILE of `pid`; returns the previous one.
fn set_open_files_limit(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes only the two structs passed, which outlive the call.
    assert_eq!(
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above; `pid` is the master this test started.
    assert_eq!(
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) },
        0
    );
    old.rlim_cur
}
