//! Drains that outlive a hand-over: upgraded connections kept until their listener's drain
//! timeout, several generations draining at once up to `max_draining`, and the stop's own
//! drain timeout. `examples/websocket.rs`'s `/ws/linger` sockets ignore the drain.

mod util;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{self, Message};
use util::{Options, Service};

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// A WebSocket that ignores the drain, and the pid that greeted it.
fn linger(service: &Service) -> (Socket, u32) {
    let url = format!("ws://127.0.0.1:{}/ws/linger", service.port);
    let (mut socket, _) = tungstenite::connect(url).unwrap();
    let greeting = socket.read().unwrap().into_text().unwrap();
    let pid = greeting.strip_prefix("pid=").unwrap().parse().unwrap();
    (socket, pid)
}

/// Sends `text` and returns the echo.
fn echo(socket: &mut Socket, text: &str) -> tungstenite::Result<String> {
    socket.send(Message::text(text))?;
    Ok(socket.read()?.into_text()?.to_string())
}

fn with_socket(config: &str) -> (String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    (
        format!("{config}control_socket = \"{}\"\n", socket.display()),
        socket,
        dir,
    )
}

fn status(socket: &std::path::Path) -> String {
    handover::control_request(socket, "status").unwrap()
}

#[test]
fn an_upgraded_connection_is_served_until_its_listeners_drain_timeout_then_cut() {
    let (config, control, _dir) = with_socket("drain_timeout = \"30s\"\n");
    let service = Service::serving(Options {
        example: "websocket",
        config: &config,
        listen: "drain_timeout = \"3s\"\n",
        ..Default::default()
    });
    let (mut socket, old) = linger(&service);
    let restarted = Instant::now();
    let new = service.restart();
    assert_ne!(new, old);
    // Long after the one second the worker runtime used to be given, the socket still echoes
    // from the old worker, which the drain keeps alive for it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(echo(&mut socket, "still here").unwrap(), "still here");
    assert!(util::alive(old));
    let shown = status(&control);
    let line = shown
        .lines()
        .find(|l| l.starts_with("draining:"))
        .unwrap_or_else(|| panic!("no draining line:\n{shown}"));
    assert!(
        line.contains(&format!("(pid {old}): 1 connection open,")) && line.ends_with("s left"),
        "{line}"
    );
    // At the listener's 3 s (not the top-level 30 s) the socket is cut, and the old worker exits
    // by itself, not killed by the master.
    let cut = loop {
        match echo(&mut socket, "ping") {
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break restarted.elapsed(),
        }
        assert!(restarted.elapsed() < Duration::from_secs(10), "never cut");
    };
    assert!(cut >= Duration::from_millis(2900), "cut after {cut:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while util::alive(old) {
        assert!(Instant::now() < deadline, "the old worker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = service.log();
    assert!(log.contains("the listener's drain timeout passed; closing its connections"));
    assert!(
        !log.contains("drain timeout passed; killing the old worker"),
        "{log}"
    );
    assert_eq!(
        util::field(&service.get("/").unwrap().1, "pid"),
        new.to_string()
    );
}

#[test]
fn generations_drain_side_by_side_up_to_max_draining_then_a_hand_over_waits_and_says_so() {
    let (config, control, _dir) = with_socket("drain_timeout = \"30s\"\nmax_draining = 2\n");
    let service = Service::serving(Options {
        example: "websocket",
        config: &config,
        ..Default::default()
    });
    let (mut first, one) = linger(&service);
    // A hand-over while an old generation drains proceeds at once.
    let started = Instant::now();
    let two = service.restart();
    let (_second, seen) = linger(&service);
    assert_eq!(seen, two);
    let three = service.restart();
    let overlapped = started.elapsed();
    let (_third, seen) = linger(&service);
    assert_eq!(seen, three);
    assert!(util::alive(one) && util::alive(two));
    let shown = status(&control);
    let draining: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("draining:"))
        .collect();
    assert_eq!(draining.len(), 2, "{shown}");
    assert!(
        draining[0].contains(&format!("(pid {one}): 1 connection open")),
        "{shown}"
    );
    assert!(
        draining[1].contains(&format!("(pid {two}): 1 connection open")),
        "{shown}"
    );
    // A third generation would drain beyond max_draining = 2: the hand-over waits.
    service.signal(libc::SIGUSR2);
    service.wait_log(
        "hand-over waits: max_draining old generations still drain",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        service.worker_pid(),
        three,
        "no hand-over beyond max_draining"
    );
    assert!(status(&control).contains("hand-over: waiting, 2 old generations drain"));
    // The oldest generation's last socket closes: it exits, and the waiting hand-over starts.
    assert_eq!(echo(&mut first, "last words").unwrap(), "last words");
    first.close(None).unwrap();
    let _ = first.read();
    let four = util::field(&service.wait_new_worker(three), "pid");
    assert!(!util::alive(one));
    assert!(util::alive(two), "the younger generation still drains");
    service.wait_log(
        "an old generation exited; the waiting hand-over starts",
        Duration::from_secs(1),
    );
    eprintln!("two hand-overs while one generation drained: {overlapped:?}; then worker {four}");
}

#[test]
fn a_stop_drains_for_stop_drain_timeout_not_the_listeners_hour() {
    let mut service = Service::serving(Options {
        example: "websocket",
        config: "drain_timeout = \"1h\"\nstop_drain_timeout = \"1s\"\n",
        ..Default::default()
    });
    let (mut socket, old) = linger(&service);
    // One generation already draining after a restart, one serving: both end within the stop's.
    let _new = service.restart();
    let (mut serving, _) = linger(&service);
    let stopped = Instant::now();
    service.signal(libc::SIGTERM);
    let code = service.wait_exit(Duration::from_secs(6));
    let took = stopped.elapsed();
    assert_eq!(code, Some(0), "a clean stop; log:\n{}", service.log());
    assert!(took < Duration::from_secs(4), "the stop took {took:?}");
    assert!(echo(&mut socket, "gone?").is_err());
    assert!(echo(&mut serving, "gone?").is_err());
    assert!(!util::alive(old));
}
