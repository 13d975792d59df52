//! The master upgrades itself in place: after an upgrade passes probation, on `handover reexec`
//! and on SIGUSR1 it re-executes its binary on disk with the same PID, keeping the sockets and
//! the serving worker; a build that cannot read its state, a failed exec and a SIGKILL right
//! after the exec leave nothing broken.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};
use util::{field, with_trailer, Options, Service};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// Asks the control socket with the `handover` command: its answer, or its error.
fn ask(socket: &Path, command: &str) -> Result<String, String> {
    let out = Command::new(HANDOVER)
        .arg(command)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

fn control(socket: &Path, command: &str) -> String {
    ask(socket, command).unwrap_or_else(|e| panic!("handover {command}: {e}"))
}

fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A service with a control socket in a directory of its own and a quick probation.
fn service(example: &'static str, extra: &str) -> (Service, tempfile::TempDir, PathBuf) {
    service_with(example, extra, "500ms")
}

fn service_with(
    example: &'static str,
    extra: &str,
    probation: &str,
) -> (Service, tempfile::TempDir, PathBuf) {
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("control.sock");
    let config = format!(
        "control_socket = \"{}\"\nfetcher = \"file\"\n{extra}\n[upgrade]\ninterval = \"1h\"\nprobation = \"{probation}\"\n[file]\nsettle = \"50ms\"\n",
        socket.display()
    );
    let service = Service::serving(Options {
        example,
        config: Box::leak(config.into_boxed_str()),
        ..Options::default()
    });
    (service, sockets, socket)
}

/// wrk against `/`, for `seconds`, with 64 kept-alive connections.
struct Wrk(Option<Child>, PathBuf);

impl Wrk {
    fn start(port: u16, seconds: u32, out: PathBuf) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{seconds}s")])
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("wrk (Debian's wrk package; .ci/test installs it)");
        Wrk(Some(child), out)
    }

    /// Waits for wrk to finish; returns (requests, failures) from its report.
    fn finish(mut self) -> (u64, u64, String) {
        let status = self.0.take().unwrap().wait().unwrap();
        let report = std::fs::read_to_string(&self.1).unwrap();
        assert!(status.success(), "wrk failed: {report}");
        let number = |after: &str| -> u64 {
            report
                .split_once(after)
                .map(|(_, rest)| {
                    rest.trim_start()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let requests = report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let failed = number("Non-2xx or 3xx responses:")
            + number("connect ")
            + number("read ")
            + number("write ")
            + number("timeout ");
        (requests, failed, report)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn an_upgrade_re_executes_the_master_under_load_keeping_pid_sockets_and_worker() {
    let (service, _sockets, socket) = service("hello", "");
    let master = service.pid();
    let old_code = inode(&format!("/proc/{master}/exe"));
    let wrk = Wrk::start(service.port, 14, service.path("wrk.txt"));
    let slow = Load::start(service.addr(), 8, Protocol::Http1, "/sleep?ms=300");
    slow.wait_progress(8);

    let new = with_trailer(&service.bin, "release-2");
    service.offer(&new, "old worker exited");
    let serving = service.worker_pid();
    service.wait_log("master upgraded in place", Duration::from_secs(20));
    assert_eq!(service.pid(), master, "the master's PID changed");
    let exe = exe_of(master);
    assert_eq!(
        exe,
        service.bin.display().to_string(),
        "the master runs the new file"
    );
    let code = inode(&format!("/proc/{master}/exe"));
    assert_eq!(code, inode(&exe), "the master runs the new file");
    assert_ne!(code, old_code, "the master runs its old code");
    assert_eq!(
        service.worker_pid(),
        serving,
        "the worker that became ready before the master's exec still serves"
    );
    let status = control(&socket, "status");
    let sha = util::sha256_hex(&new);
    assert!(
        status.contains(&format!(
            "master: version 0.1.0 sha256 {}, upgraded in place 1 times",
            &sha[..12]
        )),
        "{status}"
    );
    assert!(
        status.contains("last upgrade:") && status.contains("installed from"),
        "{status}"
    );

    // Ten more in a row (by request): descriptors and memory stay flat.
    let (fds, rss) = (util::open_fds(master), util::resident_kib(master));
    for n in 2..=11 {
        control(&socket, "reexec");
        service.wait_log(&format!("upgrades={n}"), Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        service.worker_pid(),
        serving,
        "a master upgrade restarted the worker"
    );
    assert_eq!(
        util::open_fds(master),
        fds,
        "the master's descriptors grew over ten upgrades"
    );
    let grown = util::resident_kib(master).saturating_sub(rss);
    assert!(
        grown < rss / 4 + 1024,
        "the master's RSS grew by {grown} KiB over ten upgrades"
    );

    let (requests, failed, report) = wrk.finish();
    let stats = slow.finish();
    eprintln!(
        "wrk across 11 master upgrades: {requests} requests, {failed} failed; slow requests: {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert!(requests > 1000, "{report}");
    assert_eq!(failed, 0, "wrk saw failures:\n{report}");
    assert_eq!(stats.failed, 0, "slow requests failed: {:?}", stats.errors);
    assert!(stats.ok > 8);
}

#[test]
fn a_build_that_cannot_read_the_master_state_is_installed_for_workers_only() {
    for (fault, why) in [
        ("master-state:none", "did not read this master's state"),
        ("master-state:2", "reads master state format 2"),
    ] {
        let (service, _sockets, socket) = service("testbed", "");
        let master = service.pid();
        let exe = exe_of(master);
        let new = with_trailer(&service.bin, fault);
        service.offer(&new, "upgrade passed probation");
        service.wait_for_sha(&util::sha256_hex(&new));
        let log = service.wait_log("installed for workers only", Duration::from_secs(10));
        assert!(log.contains(why), "{log}");
        assert!(!log.contains("master re-executing"), "{log}");
        assert_eq!(
            exe_of(master),
            format!("{exe} (deleted)"),
            "the master kept its code"
        );
        let status = control(&socket, "status");
        assert!(
            status.contains("warning: sha256")
                && status.contains("the master keeps running its own code"),
            "{status}"
        );
        // A manual request is refused for the same reason, and changes nothing.
        let answer = ask(&socket, "reexec").unwrap_err();
        assert!(
            answer.contains("does not read master state format 1"),
            "{answer}"
        );
        assert_eq!(service.pid(), master);
    }
}

#[test]
fn a_failed_exec_leaves_the_master_running_as_before() {
    use std::os::unix::fs::PermissionsExt;
    let (service, _sockets, socket) = service("hello", "");
    let master = service.pid();
    let worker = service.worker_pid();
    // Not executable any more: the check mode run is refused before any exec.
    std::fs::set_permissions(&service.bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let answer = ask(&socket, "reexec").unwrap_err();
    assert!(answer.contains("permission denied"), "{answer}");
    assert_eq!(service.worker_pid(), worker);

    // Removed after probation passed, just before the exec.
    std::fs::set_permissions(&service.bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let new = with_trailer(&service.bin, "release-2");
    service.offer(&new, "upgrade installed and serving");
    let moved = service.path("moved-away");
    std::fs::rename(&service.bin, &moved).unwrap();
    service.wait_log("old worker exited", Duration::from_secs(10));
    let serving = service.worker_pid();
    let log = service.wait_log(
        "failed; the master keeps running its code: cannot read",
        Duration::from_secs(10),
    );
    assert!(log.contains("No such file"), "{log}");
    assert_eq!(service.pid(), master);
    assert_eq!(service.worker_pid(), serving, "the worker was disturbed");
    let status = control(&socket, "status");
    assert!(status.contains("phase: serving"), "{status}");
    // Put back: the next request takes it.
    std::fs::rename(&moved, &service.bin).unwrap();
    control(&socket, "reexec");
    service.wait_log("master upgraded in place", Duration::from_secs(10));
    assert_eq!(exe_of(master), service.bin.display().to_string());
    assert_eq!(service.worker_pid(), serving);
}

#[test]
fn an_execve_that_fails_restores_every_descriptor_and_keeps_serving() {
    let (service, _sockets, socket) = service("hello", "");
    let master = service.pid();
    let new = with_trailer(&service.bin, "release-2");
    service.offer(&new, "upgrade installed and serving");
    // Not executable when the exec comes: every check has passed (the bytes are the ones that
    // passed probation), and the kernel refuses the exec itself.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&service.bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    service.wait_log("Permission denied", Duration::from_secs(10));
    assert!(
        service
            .log()
            .contains("master upgrade failed; the master keeps running its code: execve of"),
        "{}",
        service.log()
    );
    service.wait_log("old worker exited", Duration::from_secs(10));
    let serving = service.worker_pid();
    let fds = util::open_fds(master);
    let status = control(&socket, "status");
    assert!(
        status.contains("phase: serving") && status.contains("upgraded in place 0 times"),
        "{status}"
    );
    std::fs::set_permissions(&service.bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    control(&socket, "reexec");
    service.wait_log("master upgraded in place", Duration::from_secs(10));
    assert_eq!(service.pid(), master);
    assert_eq!(service.worker_pid(), serving);
    // The failed exec left no descriptor behind (the state's memfd, say): the new code, which
    // holds exactly what it needs, has as many.
    assert_eq!(
        util::open_fds(master),
        fds,
        "descriptors differ after the failed exec"
    );
}

#[test]
fn a_probation_that_a_manual_re_exec_interrupts_goes_on_in_the_new_code() {
    let (service, _sockets, socket) = service_with("hello", "", "4s");
    let new = with_trailer(&service.bin, "release-2");
    service.offer(&new, "probation runs");
    control(&socket, "reexec");
    service.wait_log("master upgraded in place", Duration::from_secs(10));
    let log = service.wait_log("upgrade passed probation", Duration::from_secs(15));
    assert!(
        log.contains("resuming the probation a previous master started"),
        "{log}"
    );
    let status = control(&socket, "status");
    assert!(status.contains("installed from"), "{status}");
    assert!(!status.contains("probation:"), "{status}");
}

#[test]
fn systemd_sees_reloading_then_ready_with_the_same_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("control.sock");
    let config = format!("control_socket = \"{}\"\n", socket.display());
    let service = Service::serving(Options {
        config: &config,
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Options::default()
    });
    let master = service.pid();
    let until = |wanted: &str| loop {
        let mut buffer = [0u8; 4096];
        let n = notify.recv(&mut buffer).expect("a notification");
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if message.contains(wanted) {
            return message;
        }
    };
    assert!(until("READY=1").contains(&format!("MAINPID={master}")));
    control(&socket, "reexec");
    let reloading = until("RELOADING=1");
    assert!(
        reloading.contains("MONOTONIC_USEC=") && reloading.contains("master upgrade"),
        "{reloading}"
    );
    let ready = until("READY=1");
    assert!(ready.contains(&format!("MAINPID={master}")), "{ready}");
    assert_eq!(service.pid(), master);
}

#[test]
fn a_master_killed_right_after_its_exec_leaves_no_orphans_and_restarts_on_the_new_binary() {
    let (mut service, _sockets, _socket) = service("hello", "");
    let new = with_trailer(&service.bin, "release-2");
    service.offer(&new, "old worker exited");
    service.wait_log("master upgraded in place", Duration::from_secs(20));
    let worker = service.worker_pid();
    service.signal(libc::SIGKILL);
    let _ = service.child.take().unwrap().wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while util::alive(worker) {
        assert!(
            Instant::now() < deadline,
            "worker {worker} outlived its master"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The service manager starts it again: the new binary serves.
    service.spawn_master();
    let body = service.wait_serving();
    assert_eq!(field(&body, "sha256"), util::sha256_hex(&new)[..12]);
    assert_eq!(exe_of(service.pid()), service.bin.display().to_string());
}

#[test]
fn a_changed_config_is_read_by_the_new_master_and_a_bad_one_is_refused() {
    let (service, _sockets, socket) = service("hello", "");
    let master = service.pid();
    let config_path = service.path("handover.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let port = util::free_port();
    let second = format!("\n[[listen]]\nname = \"admin\"\ntcp = \"127.0.0.1:{port}\"\n");
    std::fs::write(&config_path, format!("{config}{second}")).unwrap();
    control(&socket, "reexec");
    service.wait_log("the listeners changed", Duration::from_secs(10));
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while util::http_get(admin, "/").is_err() {
        assert!(
            Instant::now() < deadline,
            "the added listener never served:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(service.get("/").is_ok());
    assert_eq!(service.pid(), master);

    // A config that does not parse: refused with the reason, the master keeps running.
    std::fs::write(&config_path, format!("{config}{second}ready_timeout = 5\n")).unwrap();
    let answer = ask(&socket, "reexec").unwrap_err();
    assert!(answer.contains("ready_timeout"), "{answer}");
    assert!(util::http_get(admin, "/").is_ok());

    // Removed again: closed once the worker that had it drained.
    std::fs::write(&config_path, &config).unwrap();
    control(&socket, "reexec");
    let deadline = Instant::now() + Duration::from_secs(15);
    while util::http_get(admin, "/").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed listener still serves:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(service.get("/").is_ok());
    assert_eq!(service.pid(), master);
}

#[test]
fn handover_run_re_executes_itself_keeping_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let handover = dir.path().join("handover");
    std::fs::copy(HANDOVER, &handover).unwrap();
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/pyserver.py");
    let run = util::run::Supervised::start_in(dir, &handover, &program, &[], &[], "");
    let master = run.pid();
    let socket = run.socket();
    let serving = run.wait_answering();
    let program_pid = || run.wait_answering();
    let wait_count =
        |n: usize| run.wait_log_count("master upgraded in place", n, Duration::from_secs(20));
    // SIGUSR1: the same code again.
    run.signal(libc::SIGUSR1);
    wait_count(1);
    assert_eq!(program_pid(), serving);

    // A package upgrade of the handover binary, then `handover reexec`.
    let mut bytes = std::fs::read(HANDOVER).unwrap();
    bytes.extend_from_slice(b"\nnew build\n");
    let staged = run.dir.path().join("handover.new");
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &handover).unwrap();
    assert!(exe_of(master).ends_with("(deleted)"));
    let answer = control(&socket, "reexec");
    assert!(answer.contains("re-executes"), "{answer}");
    wait_count(2);
    assert_eq!(exe_of(master), handover.display().to_string());
    assert_eq!(program_pid(), serving, "the program was restarted");
    let status = control(&socket, "status");
    let sha = util::sha256_hex(&bytes);
    assert!(
        status.contains(&format!("sha256 {}, upgraded in place 2 times", &sha[..12])),
        "{status}"
    );
    // Still supervising: a restart hands over to a new program.
    control(&socket, "restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    while program_pid() == serving {
        assert!(
            Instant::now() < deadline,
            "no hand-over after the master upgrade:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
