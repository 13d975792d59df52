//! The master/worker core, with real processes, signals and sockets on 127.0.0.1.

mod util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};
use util::{Options, Service};

fn restarts_under_load(protocol: Protocol) {
    let service = Service::serving(Options::default());
    let master = service.pid();
    let load = Load::start(service.addr(), 64, protocol, "/");
    load.wait_progress(500);
    let mut workers = HashSet::new();
    workers.insert(service.worker_pid());
    for _ in 0..20 {
        let new = service.restart();
        assert!(workers.insert(new), "worker pid {new} reused");
        load.wait_progress(200);
        assert_eq!(service.pid(), master);
        assert!(util::alive(master));
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.errors);
    assert!(
        stats.ok > 4000,
        "too little load to prove anything: {stats:?}"
    );
    assert!(
        stats.pids.len() >= 20,
        "load reached only {} workers",
        stats.pids.len()
    );
    eprintln!(
        "{protocol:?}: {} requests, 0 failed, across 20 restarts ({} refused unsent after GOAWAY)",
        stats.ok, stats.refused_before_sending
    );
    // Every worker says where its start-up went, timed from the master's spawn.
    let log = service.log();
    let start_ups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker start-up: exec "))
        .collect();
    assert!(start_ups.len() >= 21, "{log}");
    assert!(
        start_ups
            .iter()
            .all(|l| !l.contains("exec ?") && l.contains(", runtime ")),
        "{start_ups:#?}"
    );
}

#[test]
fn twenty_restarts_under_http1_keep_alive_load_fail_no_request() {
    restarts_under_load(Protocol::Http1);
}

#[test]
fn twenty_restarts_under_http2_load_fail_no_request() {
    restarts_under_load(Protocol::Http2);
}

#[test]
fn a_slow_request_in_flight_across_a_restart_completes() {
    let service = Service::serving(Options::default());
    let addr = service.addr();
    let slow = std::thread::spawn(move || util::http_get(addr, "/sleep?ms=2000"));
    std::thread::sleep(Duration::from_millis(300));
    let old = service.worker_pid();
    let new = service.restart();
    assert_ne!(old, new);
    let (status, body) = slow.join().unwrap().expect("slow request");
    assert_eq!(status, 200);
    assert!(body.contains("slept 2000ms"), "{body}");
    assert_eq!(
        util::field(&body, "pid"),
        old.to_string(),
        "served by the old worker while it drained"
    );
}

#[test]
fn a_new_worker_that_exits_at_start_or_never_gets_ready_leaves_the_old_one_serving() {
    let service = Service::serving(Options {
        example: "testbed",
        ..Default::default()
    });
    let good = std::fs::read(&service.bin).unwrap();
    let old = service.worker_pid();
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);
    for fault in ["exit-at-start", "never-ready"] {
        // An operator replaced the binary with a broken build and asked for a restart.
        util::drop_file(&service.bin, &util::with_trailer(&service.bin, fault));
        let failures = service.log_count("hand-over failed");
        service.signal(libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(15);
        while service.log_count("hand-over failed") == failures {
            assert!(
                Instant::now() < deadline,
                "{fault}: hand-over never failed:\n{}",
                service.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            service.worker_pid(),
            old,
            "{fault}: the old worker must keep serving"
        );
        load.wait_progress(100);
        util::drop_file(&service.bin, &good);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    let log = service.log();
    assert!(
        log.contains("exited before it was ready (exit code 3)"),
        "{log}"
    );
    assert!(log.contains("not ready within 5s"), "{log}");
    assert!(util::alive(service.pid()));
}

#[test]
fn a_killed_worker_is_replaced_and_only_its_in_flight_requests_may_fail() {
    let service = Service::serving(Options::default());
    let load = Load::start(service.addr(), 32, Protocol::Http1, "/");
    load.wait_progress(300);
    let victim = service.worker_pid();
    // SAFETY: kill(2) on a worker of our own master.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let body = service.wait_new_worker(victim);
    load.wait_progress(300);
    let stats = load.finish();
    assert!(service.log().contains("worker crashed; sockets stay open"));
    // At most one request per connection was in flight on the killed worker.
    assert!(
        stats.failed <= 32,
        "{} failed: {:?}",
        stats.failed,
        stats.errors
    );
    eprintln!(
        "SIGKILL of worker under 32 connections: {} of {} requests failed; new worker: {body}",
        stats.failed,
        stats.ok + stats.failed
    );
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_and_the_master_exits_zero() {
    let mut service = Service::serving(Options::default());
    let addr = service.addr();
    let slow = std::thread::spawn(move || util::http_get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    service.signal(libc::SIGTERM);
    let (status, body) = slow.join().unwrap().expect("in-flight request");
    assert_eq!((status, body.contains("slept 1500ms")), (200, true));
    assert_eq!(service.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn workers_are_gone_within_a_second_of_the_master_being_killed() {
    let mut service = Service::serving(Options::default());
    let worker = service.worker_pid();
    assert!(util::alive(worker));
    service.signal(libc::SIGKILL);
    service.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(1);
    while util::alive(worker) {
        assert!(
            Instant::now() < deadline,
            "worker {worker} outlived its master by more than 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn several_tcp_addresses_and_a_unix_socket_are_served_through_one_handover() {
    let extra = util::free_port();
    // An IPv6 socket, kept on 127.0.0.1 through its IPv4-mapped address: the master binds and
    // passes an AF_INET6 listener, which IPv4 clients reach.
    let ipv6 = util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hello.sock");
    // A stale socket file from a dead process must be replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = format!(
        "[[listen]]\nname = \"second\"\ntcp = \"127.0.0.1:{extra}\"\n\
         [[listen]]\nname = \"ipv6\"\ntcp = \"[::ffff:127.0.0.1]:{ipv6}\"\n\
         [[listen]]\nname = \"unix\"\nunix = \"{}\"\n",
        socket.display()
    );
    let mut service = Service::serving(Options {
        config: &config,
        ..Default::default()
    });
    let unix_get = |socket: &std::path::Path| -> String {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    };
    let served_by = |worker: u32| {
        assert!(unix_get(&socket).contains(&format!("pid={worker}")));
        for port in [extra, ipv6] {
            let (_, body) = util::http_get(([127, 0, 0, 1], port).into(), "/").unwrap();
            assert!(
                body.contains(&format!("pid={worker}")),
                "port {port}: {body}"
            );
        }
    };
    served_by(service.worker_pid());
    served_by(service.restart());
    assert!(
        service
            .log()
            .contains(&format!("[::ffff:127.0.0.1]:{ipv6}")),
        "the IPv6 listener is not in the log:\n{}",
        service.log()
    );
    assert!(socket.exists(), "socket file kept across the hand-over");
    service.signal(libc::SIGTERM);
    assert_eq!(service.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(!socket.exists(), "socket file removed at final stop");
}

#[test]
fn exclusive_jobs_never_overlap_and_the_program_never_runs_in_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let job_log = dir.path().join("job.log");
    let marks = dir.path().join("marks");
    let service = Service::serving(Options {
        example: "testbed",
        env: vec![
            ("HELLO_JOB_LOG".into(), job_log.display().to_string()),
            ("HELLO_MARK".into(), marks.display().to_string()),
        ],
        ..Default::default()
    });
    let wait_for_job_of = |pid: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&job_log)
            .unwrap_or_default()
            .contains(&format!("start {pid}\n"))
        {
            assert!(
                Instant::now() < deadline,
                "the job of worker {pid} never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut workers = vec![service.worker_pid()];
    wait_for_job_of(workers[0]);
    for _ in 0..20 {
        let new = service.restart();
        workers.push(new);
        wait_for_job_of(new);
    }
    let log = std::fs::read_to_string(&job_log).unwrap();
    assert!(
        !log.contains("OVERLAP"),
        "two exclusive jobs ran at once:\n{log}"
    );
    let lines: Vec<&str> = log.lines().collect();
    for pair in lines.chunks(2).take(20) {
        let (start, stop) = (pair[0], pair[1]);
        assert!(
            start.starts_with("start ") && stop.starts_with("stop "),
            "not alternating: {pair:?}\n{log}"
        );
        assert_eq!(
            start[6..],
            stop[5..],
            "a job stopped that had not started: {pair:?}"
        );
    }
    let marked: Vec<u32> = std::fs::read_to_string(&marks)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        !marked.contains(&service.pid()),
        "the program closure ran in the master"
    );
    assert_eq!(
        marked.len(),
        workers.len(),
        "the closure ran once per worker"
    );
    for pid in &workers {
        assert!(marked.contains(pid));
    }
}

#[test]
fn restart_requests_during_a_handover_are_coalesced_into_one_more() {
    // Every worker of this binary takes a second to get ready, so the hand-over is still under
    // way when more requests arrive.
    let service = Service::start(Options {
        example: "testbed",
        ..Default::default()
    });
    util::drop_file(
        &service.bin,
        &util::with_trailer(&service.bin, "slow-ready:1000"),
    );
    service.wait_serving();
    let started = service.log_count("worker started");
    service.signal(libc::SIGUSR2);
    service.wait_log("reason=\"restart\"", Duration::from_secs(10));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        service.signal(libc::SIGUSR2);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.log_count("hand-over complete") < 2 {
        assert!(Instant::now() < deadline, "{}", service.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        service.log_count("worker started") - started,
        2,
        "never lost, never doubled:\n{}",
        service.log()
    );
    assert!(service.log().contains("one more will follow it"));
}

#[test]
fn a_udp_socket_is_passed_through_a_handover() {
    let udp_port = util::free_port();
    let config = format!("[[listen]]\nname = \"dns\"\nudp = \"127.0.0.1:{udp_port}\"\n");
    let service = Service::serving(Options {
        config: &config,
        ..Default::default()
    });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let ask = |payload: &str| -> String {
        let mut buffer = [0u8; 256];
        for _ in 0..20 {
            socket
                .send_to(payload.as_bytes(), ("127.0.0.1", udp_port))
                .unwrap();
            if let Ok(n) = socket.recv(&mut buffer) {
                return String::from_utf8_lossy(&buffer[..n]).into_owned();
            }
        }
        panic!("no answer over UDP");
    };
    let before = service.worker_pid();
    assert_eq!(ask("ping"), format!("pid={before} ping"));
    let after = service.restart();
    // The old worker may answer a datagram while it drains; the new one takes over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask("ping") != format!("pid={after} ping") {
        assert!(
            Instant::now() < deadline,
            "the new worker never answered over UDP"
        );
    }
}

#[test]
fn sockets_passed_by_systemd_activation_are_adopted_instead_of_bound() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let activated = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let activated_port = activated.local_addr().unwrap().port();
    let unused_port = util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("hello");
    std::fs::copy(util::example("hello"), &bin).unwrap();
    let config = dir.path().join("handover.toml");
    std::fs::write(
        &config,
        format!("[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{unused_port}\"\n"),
    )
    .unwrap();
    let fd = activated.as_raw_fd();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_handover"));
    // The exec shim sets LISTEN_PID to the PID the program will run as, as systemd does.
    command
        .args(["__exec", "--"])
        .arg(&bin)
        .env("HANDOVER_CONFIG", &config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("master.log")).unwrap());
    // SAFETY: dup2 places the listener at fd 3 in the child, as systemd would; async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself is a no-op that would leave close-on-exec set.
            let placed = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if placed < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let child = util::spawn(&mut command);
    let guard = util::ProcessTree(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok((200, body)) = util::http_get(([127, 0, 0, 1], activated_port).into(), "/") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the activated socket was never served:\n{}",
            std::fs::read_to_string(dir.path().join("master.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("hello from pid="), "{body}");
    assert!(
        util::http_get(([127, 0, 0, 1], unused_port).into(), "/").is_err(),
        "bound the configured address too"
    );
    drop(guard);
    let mut child = child;
    let _ = child.wait();
}

#[test]
fn a_worker_that_crashes_at_every_start_is_retried_with_growing_back_off() {
    let service = Service::start(Options {
        example: "testbed",
        ..Default::default()
    });
    service.wait_serving();
    let good = std::fs::read(&service.bin).unwrap();
    // A generation that becomes ready and then keeps crashing: recoveries run it (it is the
    // one that served) with growing back-off, then the binary on disk gets its chance.
    util::drop_file(
        &service.bin,
        &util::with_trailer(&service.bin, "crash-after-ready:50"),
    );
    service.signal(libc::SIGUSR2);
    service.wait_log("delay=800ms attempt=4", Duration::from_secs(15));
    let log = service.log();
    for (delay, attempt) in [("100ms", 1), ("200ms", 2), ("400ms", 3)] {
        assert!(
            log.contains(&format!("delay={delay} attempt={attempt}")),
            "no back-off {delay}:\n{log}"
        );
    }
    assert!(
        log.contains("recovery runs the generation that served"),
        "{log}"
    );
    assert!(util::alive(service.pid()), "the master stays up");
    // Fixed binary: the next attempt serves.
    util::drop_file(&service.bin, &good);
    service.wait_for_sha(&util::sha256_hex(&good));
}

#[test]
fn a_recovery_runs_the_generation_that_served_not_a_binary_swapped_in_since() {
    let service = Service::start(Options {
        example: "testbed",
        ..Default::default()
    });
    let serving = service.served_sha();
    util::drop_file(
        &service.bin,
        &util::with_trailer(&service.bin, "exit-at-start"),
    );
    // SAFETY: kill(2) on a worker of our own master.
    unsafe { libc::kill(service.worker_pid() as i32, libc::SIGKILL) };
    service.wait_log(
        "recovery runs the generation that served",
        Duration::from_secs(15),
    );
    let worker = service.worker_pid();
    assert_eq!(
        service.served_sha(),
        serving,
        "the recovery ran another binary"
    );
    assert_eq!(
        service.log_count("new worker exited before it was ready"),
        0
    );
    // The pin is the only file beside the live binary, and it is that generation's bytes
    // (the previous generation's pin goes once the master has seen the new worker ready).
    let pins = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(service.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".handover-gen-"))
            .map(|e| e.path())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pins().len() != 1 {
        assert!(std::time::Instant::now() < deadline, "pins: {:?}", pins());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        util::sha256_hex(&std::fs::read(&pins()[0]).unwrap())[..12],
        serving
    );
    assert_eq!(service.worker_pid(), worker);
}

#[test]
fn an_old_worker_past_the_drain_timeout_closes_what_is_left_and_exits() {
    let service = Service::serving(Options {
        config: "drain_timeout = \"1s\"\n",
        ..Default::default()
    });
    let addr = service.addr();
    let slow = std::thread::spawn(move || util::http_get(addr, "/sleep?ms=8000"));
    std::thread::sleep(Duration::from_millis(300));
    let old = service.worker_pid();
    service.restart();
    // The worker cuts its connections at the timeout itself; the master kills one that does
    // not exit a grace later (a program under `handover run`: tests/cli.rs).
    service.wait_log(
        "the listener's drain timeout passed; closing its connections",
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while util::alive(old) {
        assert!(
            Instant::now() < deadline,
            "old worker {old} still alive after its drain timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(slow
        .join()
        .unwrap()
        .map(|(status, _)| status != 200)
        .unwrap_or(true));
}

#[test]
fn a_second_sigint_forces_the_stop() {
    let mut service = Service::serving(Options::default());
    let addr = service.addr();
    let _slow = std::thread::spawn(move || util::http_get(addr, "/sleep?ms=20000"));
    std::thread::sleep(Duration::from_millis(300));
    let worker = service.worker_pid();
    service.signal(libc::SIGINT);
    service.wait_log("phase from=serving to=stopping", Duration::from_secs(5));
    service.signal(libc::SIGINT);
    let code = service.wait_exit(Duration::from_secs(5));
    assert_ne!(code, Some(0), "a forced stop is not a clean exit");
    let deadline = Instant::now() + Duration::from_secs(2);
    while util::alive(worker) {
        assert!(Instant::now() < deadline, "worker survived a forced stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_can_ask_for_its_own_replacement() {
    let service = Service::serving(Options {
        example: "testbed",
        ..Default::default()
    });
    let old = service.worker_pid();
    let mut stream = std::net::TcpStream::connect(service.addr()).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(
            b"POST /restart HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("restart requested"), "{answer}");
    service.wait_new_worker(old);
    assert!(service.log().contains("hand-over requested by the worker"));
}

#[test]
fn an_axum_router_restarts_under_load_without_a_failed_request() {
    let port = util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("axum");
    std::fs::copy(util::example("axum"), &bin).unwrap();
    let mut command = std::process::Command::new(&bin);
    command
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut master = util::spawn(&mut command);
    let guard = util::ProcessTree(master.id());
    let addr = ([127, 0, 0, 1], port).into();
    let worker = || -> Option<String> {
        let (status, body) = util::http_get(addr, "/").ok()?;
        (status == 200 && body.contains("axum")).then(|| util::field(&body, "pid"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker().is_none() {
        assert!(Instant::now() < deadline, "the axum example never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = Load::start(addr, 32, Protocol::Http1, "/");
    load.wait_progress(200);
    for _ in 0..5 {
        let before = worker();
        // SAFETY: kill(2) on the master this test started.
        unsafe { libc::kill(master.id() as i32, libc::SIGUSR2) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while worker() == before {
            assert!(Instant::now() < deadline, "no hand-over");
            std::thread::sleep(Duration::from_millis(20));
        }
        load.wait_progress(100);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    drop(guard);
    let _ = master.wait();
}

#[test]
fn the_masters_signals_sent_to_a_worker_do_not_kill_it() {
    // As `systemctl kill -s USR2 app` (every process of the unit) or `pkill -USR2 app` do.
    let service = Service::serving(Options::default());
    let worker = service.worker_pid();
    for signal in [libc::SIGUSR2, libc::SIGHUP, libc::SIGUSR1] {
        // SAFETY: kill(2) on a worker of our own master.
        assert_eq!(unsafe { libc::kill(worker as i32, signal) }, 0);
    }
    service.wait_log("reached this worker; ignored", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(service.worker_pid(), worker);
    assert_eq!(service.log_count("worker crashed"), 0, "{}", service.log());
}
