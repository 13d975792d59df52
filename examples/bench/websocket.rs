//! The WebSocket row: `examples/websocket.rs` under a master, many sockets echoing numbered
//! messages one at a time through restarts. Each restart must close every socket with 1001
//! ("going away") and none with a reset; a socket reconnects at once, to the new worker, and
//! sends again the one message that was in flight.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::master::{Master, MasterSpec};
use crate::stats::Dist;

/// What the row reports.
#[derive(Debug, Clone)]
pub(crate) struct WebSocketRow {
    pub(crate) sockets: usize,
    pub(crate) restarts: usize,
    /// Sockets open again after every restart (the minimum over restarts).
    pub(crate) kept: usize,
    pub(crate) closes_1001: usize,
    /// Resets, errors, other close codes, wrong echoes.
    pub(crate) abnormal: usize,
    pub(crate) first_abnormal: Option<String>,
    pub(crate) echoed: usize,
    pub(crate) resent: usize,
    /// SIGUSR2 → every socket open again on the new worker.
    pub(crate) moved: Dist,
    /// SIGUSR2 → the old worker has exited (its drain is over).
    pub(crate) drained: Dist,
}

#[derive(Default)]
struct Tally {
    on: Mutex<Vec<Option<u32>>>,
    closes: AtomicUsize,
    abnormal: Mutex<Vec<String>>,
    echoed: AtomicUsize,
    resent: AtomicUsize,
}

async fn client(index: usize, url: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    let mut resend = false;
    let fail = |what: String| tally.abnormal.lock().unwrap().push(what);
    'connections: while !stop.load(Ordering::SeqCst) {
        let mut socket = match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, _)) => socket,
            Err(e) => return fail(format!("socket {index}: connect: {e}")),
        };
        let pid = match socket.next().await {
            Some(Ok(Message::Text(t))) => t.strip_prefix("pid=").and_then(|p| p.parse().ok()),
            other => return fail(format!("socket {index}: greeting: {other:?}")),
        };
        tally.on.lock().unwrap()[index] = pid;
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = socket.close(None).await;
                return;
            }
            let text = format!("{index}-{seq}");
            if let Err(e) = socket.send(Message::text(text.clone())).await {
                return fail(format!("socket {index}: send: {e}"));
            }
            if std::mem::take(&mut resend) {
                tally.resent.fetch_add(1, Ordering::SeqCst);
            }
            match socket.next().await {
                Some(Ok(Message::Text(echo))) if echo.as_str() == text => {
                    tally.echoed.fetch_add(1, Ordering::SeqCst);
                    seq += 1;
                }
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                    tally.on.lock().unwrap()[index] = None;
                    tally.closes.fetch_add(1, Ordering::SeqCst);
                    while let Some(next) = socket.next().await {
                        if let Err(e) = next {
                            return fail(format!("socket {index}: after the close: {e}"));
                        }
                    }
                    resend = true;
                    continue 'connections;
                }
                other => return fail(format!("socket {index}: awaiting {text}: {other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the row against `binary` (the websocket example).
pub(crate) fn run(
    binary: &Path,
    sockets: usize,
    restarts: usize,
    scratch: &Path,
    logs: &Path,
) -> anyhow::Result<WebSocketRow> {
    let spec = MasterSpec {
        name: "websocket",
        worker_threads: 2,
        drain_timeout: Duration::from_secs(10),
        extra_toml: String::new(),
        env: Vec::new(),
    };
    let mut master = Master::start(&spec, binary, &scratch.join("websocket"), logs)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("the client runtime")?;
    let tally = Arc::new(Tally {
        on: Mutex::new(vec![None; sockets]),
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("ws://{}/ws", master.addr);
    let clients: Vec<_> = (0..sockets)
        .map(|i| runtime.spawn(client(i, url.clone(), tally.clone(), stop.clone())))
        .collect();
    let all_on = |pid: u32| tally.on.lock().unwrap().iter().all(|p| *p == Some(pid));
    let wait = |what: &str, done: &dyn Fn() -> bool| -> anyhow::Result<Duration> {
        let started = Instant::now();
        while !done() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("websocket row: {what} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(started.elapsed())
    };
    let first = master.probe()?.pid;
    wait("the sockets did not all connect", &|| all_on(first))?;
    let (mut moved, mut drained, mut kept) = (Vec::new(), Vec::new(), sockets);
    let epoch = Instant::now();
    for _ in 0..restarts {
        let restart = master.restart(epoch, Duration::from_secs(20))?;
        let new = master.probe()?.pid;
        let since_signal = epoch.elapsed() - restart.signal;
        let more = wait("the sockets did not all move to the new worker", &|| {
            all_on(new)
        })?;
        moved.push(since_signal + more);
        if let (Some(gone), Some(_)) = (restart.old_gone, restart.first_new) {
            drained.push(gone - restart.signal);
        }
        let open = tally
            .on
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.is_some())
            .count();
        kept = kept.min(open);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
        }
    });
    let abnormal = tally.abnormal.lock().unwrap();
    Ok(WebSocketRow {
        sockets,
        restarts,
        kept,
        closes_1001: tally.closes.load(Ordering::SeqCst),
        abnormal: abnormal.len(),
        first_abnormal: abnormal.first().cloned(),
        echoed: tally.echoed.load(Ordering::SeqCst),
        resent: tally.resent.load(Ordering::SeqCst),
        moved: Dist::from_durations(moved),
        drained: Dist::from_durations(drained),
    })
}

/// The row as a markdown table.
pub(crate) fn markdown(row: &WebSocketRow) -> String {
    let mut out = String::from(
        "| WebSockets (examples/websocket.rs) | sockets kept | closes 1001 | resets and errors | messages echoed (re-sent after a close) | SIGUSR2 → all sockets on the new worker p50 / p99 / max | SIGUSR2 → old worker gone |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    out.push_str(&format!(
        "| {} sockets × {} restarts | {} of {} | {} | {} | {} ({}) | {} | {} |\n",
        row.sockets,
        row.restarts,
        row.kept,
        row.sockets,
        row.closes_1001,
        row.abnormal,
        row.echoed,
        row.resent,
        row.moved.cell(),
        row.drained.cell()
    ));
    if let Some(first) = &row.first_abnormal {
        out.push_str(&format!("\nfirst abnormal end: {first}\n"));
    }
    out
}
