//! The `handover` command: any program under `handover run`, the control socket, sd_notify,
//! and config errors.

mod util;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

fn python_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/pyserver.py")
}

/// `handover run` of the Python server (a copy in the run's own directory), or of a shell script
/// beside it; killed with everything below it on drop.
struct Run(util::run::Supervised);

impl std::ops::Deref for Run {
    type Target = util::run::Supervised;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Run {
    fn start(extra_config: &str, env: &[(&str, &Path)]) -> Run {
        Run::start_script(extra_config, env, None)
    }

    /// With `script`: runs a shell script (beside `pyserver`) instead of the server itself.
    fn start_script(extra_config: &str, env: &[(&str, &Path)], script: Option<&str>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut program = dir.path().join("pyserver");
        std::fs::copy(python_server(), &program).unwrap();
        if let Some(script) = script {
            use std::os::unix::fs::PermissionsExt;
            program = dir.path().join("start.sh");
            std::fs::write(&program, script).unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
        Run(util::run::Supervised::start_in(
            dir,
            Path::new(HANDOVER),
            &program,
            &[],
            &env,
            &format!("idle_grace = \"500ms\"\n{extra_config}"),
        ))
    }

    fn worker_pid(&self) -> u32 {
        self.wait_answering()
    }
}

#[test]
fn a_python_program_restarts_twenty_times_under_load_without_a_failed_request() {
    let run = Run::start("", &[]);
    let master = run.pid();
    let mut worker = run.worker_pid();
    let load = Load::start(([127, 0, 0, 1], run.port).into(), 64, Protocol::Http1, "/");
    load.wait_progress(300);
    for _ in 0..20 {
        run.signal(libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = run.worker_pid();
            if now != worker {
                worker = now;
                break;
            }
            assert!(Instant::now() < deadline, "no hand-over:\n{}", run.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        // The kept-alive connections move to the new worker (the old one answers with
        // `Connection: close` while it drains) before the next restart.
        load.wait_served_by(worker);
        load.wait_progress(100);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(run.pid(), master);
    assert!(
        stats.ok > 1000 && stats.pids.len() >= 5,
        "the load must reach the new workers: {stats:?}"
    );
    eprintln!(
        "python under handover run: {} requests, 0 failed, 20 restarts",
        stats.ok
    );
}

#[test]
fn a_python_program_is_upgraded_from_a_dropped_file_under_load() {
    let run = Run::start(
        "fetcher = \"file\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\n",
        &[],
    );
    let master = run.pid();
    let first_worker = run.worker_pid();
    let program = run.dir.path().join("pyserver");
    let next = run.dir.path().join("pyserver.next");
    let original = std::fs::read(&program).unwrap();
    let load = Load::start(([127, 0, 0, 1], run.port).into(), 32, Protocol::Http1, "/");
    load.wait_progress(200);

    // The sanity run (`--version`, must exit 0) refuses a candidate that fails it.
    util::drop_file(&next, b"#!/bin/sh\nexit 3\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.log().contains("exit code 3") {
        assert!(Instant::now() < deadline, "never refused:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(&program).unwrap(), original);

    let text = String::from_utf8(original.clone()).unwrap();
    let upgraded = text.replace("python\\n", "python-v2\\n");
    assert_ne!(upgraded, text);
    util::drop_file(&next, upgraded.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = util::http_get(([127, 0, 0, 1], run.port).into(), "/") {
            if body.contains("python-v2") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never upgraded:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    load.wait_progress(100);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(run.pid(), master, "master PID unchanged");
    assert_ne!(run.worker_pid(), first_worker);
    assert_eq!(std::fs::read(&program).unwrap(), upgraded.as_bytes());
    assert_eq!(
        std::fs::read(run.dir.path().join("pyserver.previous")).unwrap(),
        original
    );
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut run = Run::start("", &[("NOTIFY_SOCKET", &socket_path)]);
    let read = || {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let mut messages = Vec::new();
    let until = |messages: &mut Vec<String>, wanted: &str| loop {
        let message = read();
        messages.push(message.clone());
        if message.contains(wanted) {
            return message;
        }
    };
    let ready = until(&mut messages, "READY=1");
    assert!(ready.contains(&format!("MAINPID={}", run.pid())), "{ready}");
    run.signal(libc::SIGUSR2);
    let reloading = until(&mut messages, "RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready_again = until(&mut messages, "READY=1");
    assert!(ready_again.contains("STATUS="), "{ready_again}");
    run.signal(libc::SIGTERM);
    until(&mut messages, "STOPPING=1");
    let status = run.0.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Every message carries a STATUS= line for `systemctl status`.
    assert!(
        messages.iter().all(|m| m.contains("STATUS=")),
        "{messages:?}"
    );
}

#[test]
fn control_socket_commands_change_and_report_state() {
    let run = Run::start("", &[]);
    let first = run.worker_pid();
    let status = run.control("status");
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("phase: serving"), "{text}");
    assert!(
        text.contains(&format!("master pid: {}", run.pid())),
        "{text}"
    );
    assert!(text.contains(&format!("pid {first}")), "{text}");

    assert!(run.control("restart").status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.worker_pid() == first {
        assert!(Instant::now() < deadline, "restart did not hand over");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8_lossy(&run.control("status").stdout).into_owned();
    assert!(text.contains("hand-overs: 1"), "{text}");

    // No previous binary yet: rollback is refused with a reason, and the master stays up.
    let rollback = run.control("rollback");
    assert!(!rollback.status.success());
    assert!(
        String::from_utf8_lossy(&rollback.stderr).contains("previous"),
        "{rollback:?}"
    );

    // A malformed request gets an error, not a crash.
    use std::io::{Read, Write};
    let socket = run.dir.path().join("control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(&[0xff; 300]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("error: "), "{answer}");
    assert!(
        run.control("status").status.success(),
        "master survived a malformed request"
    );
}

#[test]
fn malformed_configs_are_reported_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("ready_timeout = \"soon\"\n", "h.toml:1: invalid value"),
        (
            "\nready_timout = \"1s\"\n",
            "h.toml:2: unknown field `ready_timout`",
        ),
        (
            "[[listen]]\nname = \"a\"\n",
            "listen \"a\" must set exactly one of tcp, unix, udp",
        ),
        (
            "[[listen]]\nname = \"a\"\ntcp = \"nowhere\"\n",
            "h.toml:3: invalid socket address",
        ),
        (
            "restart_signals = [\"SIGBOGUS\"]\n",
            "h.toml:1: restart_signals has an unknown signal \"SIGBOGUS\"",
        ),
        ("fetcher = \"ftp\"\n", "h.toml:1: fetcher must be one of"),
        (
            "[upgrade]\njitter = 3.0\n",
            "h.toml:2: upgrade.jitter must be between 0 and 1",
        ),
        (
            "[program]\nready = \"whenever\"\n",
            "h.toml:2: unknown variant `whenever`",
        ),
        ("ready_timeout = [\n", "h.toml:1:"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("h.toml");
        std::fs::write(&path, text).unwrap();
        let output = Command::new(HANDOVER)
            .current_dir(dir.path())
            .args(["check", "--config", "h.toml"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text:?} was accepted");
        assert!(
            stderr.contains(expected),
            "for {text:?} expected {expected:?}, got {stderr:?}"
        );
    }
    std::fs::write(
        dir.path().join("h.toml"),
        "[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let ok = Command::new(HANDOVER)
        .current_dir(dir.path())
        .args(["check", "--config", "h.toml"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("listen \"http\": tcp 127.0.0.1:8080"));
}

#[test]
fn a_fetcher_that_is_not_compiled_in_is_named_with_its_feature() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        std::fs::write(dir.path().join("h.toml"), text).unwrap();
        let output = Command::new(HANDOVER)
            .current_dir(dir.path())
            .args(["check", "--config", "h.toml"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = check("fetcher = \"s3\"\n");
    if cfg!(feature = "s3") {
        assert!(
            stderr.contains("fetcher = \"s3\" needs a [s3] table"),
            "{stderr}"
        );
        // The backend's own rules, reported at the line that breaks them.
        let stderr = check("fetcher = \"s3\"\n[s3]\nbucket = \"\"\nkey = \"app\"\n");
        assert!(stderr.contains("h.toml:3: s3.bucket"), "{stderr}");
    } else {
        assert!(
            stderr.contains("rebuild handover with the cargo feature \"s3\""),
            "{stderr}"
        );
    }
    if cfg!(feature = "github") {
        let stderr = check("fetcher = \"github\"\n\n[github]\nrepo = \"app\"\n");
        assert!(
            stderr.contains("h.toml:4: github.repo must be owner/name, not \"app\""),
            "{stderr}"
        );
    }
    if cfg!(feature = "http") {
        let stderr = check("fetcher = \"http\"\n[http]\nurl = \"ftp://example.com/app\"\n");
        assert!(stderr.contains("h.toml:3: http.url"), "{stderr}");
        assert!(stderr.contains("https only"), "{stderr}");
    }
}

/// supervisord, installed by `.ci/test` (`pip install supervisor`), supervising `handover run`.
struct Supervisord {
    child: Child,
    config: PathBuf,
}

impl Supervisord {
    fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new("supervisorctl").arg("-c").arg(&self.config).args(args).output().expect(
            "supervisorctl not found: run `pip install supervisor` (the README's test command installs it)",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "all"]);
        for pid in util::children_of(self.child.id()) {
            // SAFETY: kill(2) on processes below the supervisord this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn supervisord_keeps_tracking_the_same_pid_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = util::free_port();
    let program = dir.path().join("pyserver");
    std::fs::copy(python_server(), &program).unwrap();
    std::fs::write(
        dir.path().join("handover.toml"),
        format!(
            "idle_grace = \"500ms\"\n[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let d = dir.path().display();
    let config = dir.path().join("supervisord.conf");
    std::fs::write(
        &config,
        format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nnodaemon=true\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\
             [program:app]\ncommand={HANDOVER} run --config {d}/handover.toml -- {d}/pyserver\nautorestart=unexpected\nexitcodes=0\nstopsignal=TERM\nstopwaitsecs=30\nredirect_stderr=true\nstdout_logfile={d}/app.log\n"
        ),
    )
    .unwrap();
    let child = Command::new("supervisord")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("supervisord not found: run `pip install supervisor` (the README's test command installs it)");
    let supervisor = Supervisord { child, config };
    let get_worker = || -> Option<u32> {
        let (status, body) = util::http_get(([127, 0, 0, 1], port).into(), "/").ok()?;
        (status == 200).then(|| util::field(&body, "pid").parse().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(pid) = get_worker() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "not serving under supervisord: {}",
            supervisor.ctl(&["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let supervised = supervisor.ctl(&["pid", "app"]);
    for _ in 0..3 {
        let before = get_worker().unwrap();
        assert!(
            supervisor
                .ctl(&["signal", "SIGUSR2", "app"])
                .contains("signalled"),
            "signal refused"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_worker() == Some(before) {
            assert!(
                Instant::now() < deadline,
                "no hand-over after supervisorctl signal"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            supervisor.ctl(&["pid", "app"]),
            supervised,
            "the supervised PID changed"
        );
    }
    assert_ne!(get_worker(), Some(first));
    assert!(supervisor.ctl(&["status", "app"]).contains("RUNNING"));
    supervisor.ctl(&["stop", "app"]);
    assert!(
        supervisor.ctl(&["status", "app"]).contains("STOPPED"),
        "{}",
        supervisor.ctl(&["status", "app"])
    );
}

#[test]
fn auto_readiness_sees_a_program_that_waits_in_poll_or_select() {
    for wait in ["poll", "select"] {
        let run = Run::start(
            "ready_timeout = \"5s\"\n",
            &[("PYSERVER_WAIT", Path::new(wait))],
        );
        let first = run.worker_pid();
        let deadline = Instant::now() + Duration::from_secs(4);
        while !run.log().contains("worker ready; serving") {
            assert!(
                Instant::now() < deadline,
                "{wait}: the first worker was never seen ready:\n{}",
                run.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        run.signal(libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(4);
        while !run.log().contains("hand-over complete") {
            assert!(
                Instant::now() < deadline,
                "{wait}: the new worker was never seen ready:\n{}",
                run.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The old program stops accepting once its loop sees the drain signal.
        let deadline = Instant::now() + Duration::from_secs(5);
        while run.worker_pid() == first {
            assert!(
                Instant::now() < deadline,
                "{wait}: the old program still serves"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !run.log().contains("not ready in time"),
            "{wait}:\n{}",
            run.log()
        );
    }
}

#[test]
fn a_first_worker_never_seen_ready_is_kept_and_a_new_one_is_not() {
    let run = Run::start(
        "ready_timeout = \"1s\"\n[program]\nready = \"notify\"\n",
        &[("PYSERVER_WAIT", Path::new("poll"))],
    );
    let first = run.worker_pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run.log().contains("no other serves: keeping it") {
        assert!(Instant::now() < deadline, "no warning:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run.worker_pid(), first, "the only worker was replaced");
    let status = String::from_utf8_lossy(&run.control("status").stdout).into_owned();
    assert!(status.contains("phase: serving"), "{status}");
    // A new worker that is never ready has a predecessor to fall back to: it is killed.
    run.signal(libc::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run
        .log()
        .contains("new worker was not ready in time; killing it")
    {
        assert!(Instant::now() < deadline, "not killed:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(run.worker_pid(), first);
}

/// Processes (other than `except`) that hold a socket with inode `inode`.
fn holders_of(inode: u64, except: &[u32]) -> Vec<u32> {
    let wanted = format!("socket:[{inode}]");
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == wanted))
        {
            holders.push(pid);
        }
    }
    holders
}

#[test]
fn drain_reaches_the_whole_process_group_of_a_program_started_by_a_shell() {
    // Without `exec`: the shell stays the worker, python is its child.
    let script = "#!/bin/sh\nPYSERVER_ANY_PID=1 python3 \"$(dirname \"$0\")/pyserver\"\n";
    let run = Run::start_script("drain_timeout = \"3s\"\n", &[], Some(script));
    let first_python = run.worker_pid();
    let master = run.pid();
    // The listener's inode, as the master holds it.
    let inode = std::fs::read_dir(format!("/proc/{master}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .find(|inode| !holders_of(*inode, &[master]).is_empty())
        .expect("the master holds the listener");
    run.signal(libc::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.worker_pid() == first_python {
        assert!(Instant::now() < deadline, "no hand-over:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // After the drain timeout nothing of the old group holds the socket: only the master and
    // the new worker's group (its shell and its python).
    std::thread::sleep(Duration::from_secs(4));
    let new_group: Vec<u32> = util::descendants(master);
    let holders = holders_of(inode, &[master]);
    assert!(
        holders.iter().all(|pid| new_group.contains(pid)),
        "processes outside the serving group hold the listener: {holders:?} (serving: {new_group:?}):\n{}",
        run.log()
    );
    assert!(
        !holders.contains(&first_python),
        "the old python still holds the socket"
    );
}

#[test]
fn a_program_that_says_ready_after_it_is_seen_accepting_finds_its_notify_socket() {
    let run = Run::start("", &[("PYSERVER_NOTIFY_DELAY", Path::new("0.5"))]);
    let first = run.worker_pid();
    run.signal(libc::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.worker_pid() == first {
        assert!(Instant::now() < deadline, "no hand-over:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its late READY=1 went to a socket that is still there.
    std::thread::sleep(Duration::from_millis(1200));
    let log = run.log();
    assert!(!log.contains("worker crashed"), "{log}");
    assert!(!log.contains("Traceback"), "{log}");
}
