//! What the examples share: configuration from the environment and the hello service.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

/// Logs to stderr, in colour only on a terminal; `RUST_LOG` filters.
pub(crate) fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints an error the way a user reads it (not its Debug form) and turns it into an exit code.
pub(crate) fn exit_code(
    program: &str,
    result: Result<(), handover::Error>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `HANDOVER_CONFIG` names a config file; otherwise listen on 127.0.0.1:$PORT (default 8080)
/// and watch `$HANDOVER_WATCH` (default: this binary's path plus `.next`; `off` to disable).
pub(crate) fn config_from_env() -> Result<handover::Config, handover::Error> {
    if let Some(path) = std::env::var_os("HANDOVER_CONFIG") {
        return handover::Config::from_file(path.as_ref());
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let mut builder = handover::Config::builder()
        .listen_tcp("http", ([127, 0, 0, 1], port).into())
        .upgrade(|u| u.interval = Duration::from_secs(5));
    match std::env::var("HANDOVER_WATCH") {
        Ok(path) if path == "off" => {}
        Ok(path) => builder = builder.watch_file(path),
        Err(_) => builder = builder.with(|c| c.fetcher = Some("file".into())),
    }
    builder.build()
}

/// `GET /` answers who serves; `GET /sleep?ms=N` answers after N ms; with `restart` set,
/// `POST /restart` asks the master for a hand-over from inside the worker.
pub(crate) async fn hello(
    worker_line: String,
    restart: Option<handover::Worker>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match request.uri().path() {
        "/" => Ok(Response::new(Full::new(Bytes::from(worker_line)))),
        "/restart" if restart.is_some() && request.method() == hyper::Method::POST => {
            restart.iter().for_each(handover::Worker::restart);
            Ok(Response::new(Full::new(Bytes::from_static(
                b"restart requested\n",
            ))))
        }
        "/sleep" => {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(Full::new(Bytes::from(format!(
                "slept {ms}ms\n{worker_line}"
            )))))
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok(response)
        }
    }
}

/// Serves [`hello`] on every TCP and Unix listener the master passes, and answers datagrams
/// on UDP sockets with `pid=<pid> <payload>`.
pub(crate) async fn serve_hello(
    worker: handover::Worker,
    allow_restart: bool,
) -> Result<(), handover::Error> {
    let line = format!(
        "hello from pid={} worker={} sha256={} version={}\n",
        std::process::id(),
        worker.id(),
        &worker.binary_sha256()[..12.min(worker.binary_sha256().len())],
        env!("CARGO_PKG_VERSION")
    );
    let restart = allow_restart.then(|| worker.clone());
    let service =
        hyper::service::service_fn(move |request| hello(line.clone(), restart.clone(), request));
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for name in worker.listener_names().to_vec() {
        match worker.listener_kind(&name) {
            Some(handover::ListenerKind::Tcp) => tcp.push(worker.tcp(&name)?),
            Some(handover::ListenerKind::Unix) => unix.push(worker.unix(&name)?),
            Some(handover::ListenerKind::Udp) => {
                tokio::spawn(echo_datagrams(worker.udp(&name)?, worker.shutdown()));
            }
            // Taking it gives the precise reason (not a socket, an unsupported kind).
            _ => drop(worker.tcp(&name)?),
        }
    }
    let (a, b) = tokio::join!(
        handover::http::serve_many(&worker, tcp, service.clone()),
        handover::http::serve_many(&worker, unix, service)
    );
    a.and(b)
}

/// When `HELLO_JOB_LOG` is set, a once-per-service job appends `start <pid>` and `stop <pid>`
/// to that file and holds a lock file beside it while it runs; it records `OVERLAP` if it ever
/// finds the lock taken (which exclusivity must prevent).
pub(crate) fn spawn_logging_job(worker: &handover::Worker) {
    let Some(log) = std::env::var_os("HELLO_JOB_LOG").map(std::path::PathBuf::from) else {
        return;
    };
    worker.spawn_exclusive("ticker", move |shutdown| async move {
        use std::io::Write;
        let lock = log.with_extension("lock");
        let append = |line: String| {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("job log");
            file.write_all(line.as_bytes()).expect("job log");
        };
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_err()
        {
            append(format!("OVERLAP {}\n", std::process::id()));
        }
        append(format!("start {}\n", std::process::id()));
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let stop = shutdown.clone().wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticks.tick() => {}
            }
        }
        // Slow to stop on purpose: the next worker's job must wait for this.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = std::fs::remove_file(&lock);
        append(format!("stop {}\n", std::process::id()));
    });
}

async fn echo_datagrams(
    socket: tokio::net::UdpSocket,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buffer = [0u8; 1500];
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            received = socket.recv_from(&mut buffer) => {
                let Ok((n, peer)) = received else { continue };
                let reply = format!("pid={} {}", std::process::id(), String::from_utf8_lossy(&buffer[..n]));
                let _ = socket.send_to(reply.as_bytes(), peer).await;
            }
        }
    }
}
