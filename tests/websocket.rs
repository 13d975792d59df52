//! WebSockets across restarts: `examples/websocket.rs` under a real master, 200 sockets held
//! open by a tokio-tungstenite client through 5 restarts.

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use util::{Options, Service};

const SOCKETS: usize = 200;
const RESTARTS: usize = 5;

/// What all the sockets saw.
#[derive(Default)]
struct Tally {
    /// Sockets connected now, each with the pid that greeted it.
    connected: Mutex<Vec<Option<u32>>>,
    /// Close frames with code 1001, and the pid of the worker that sent each.
    going_away: Mutex<Vec<u32>>,
    /// Anything else: a reset, an error, a close with another code, a wrong echo.
    abnormal: Mutex<Vec<String>>,
    echoed: AtomicUsize,
    /// Messages that were in flight when a close arrived, sent again on the next socket.
    resent: AtomicUsize,
    /// A socket that reconnected landed on the worker that had just closed it.
    landed_on_old: Mutex<Vec<String>>,
}

impl Tally {
    fn abnormal(&self, what: String) {
        self.abnormal.lock().unwrap().push(what);
    }
}

/// One client: connects, echoes numbered messages one at a time, and on a 1001 close
/// reconnects and sends the unanswered message again.
async fn client(index: usize, url: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    let mut closed_by: Option<u32> = None;
    'connections: while !stop.load(Ordering::SeqCst) {
        let (mut socket, _) = match tokio_tungstenite::connect_async(&url).await {
            Ok(connected) => connected,
            Err(e) => {
                tally.abnormal(format!("socket {index}: connect: {e}"));
                return;
            }
        };
        let pid = match socket.next().await {
            Some(Ok(Message::Text(greeting))) => greeting
                .strip_prefix("pid=")
                .and_then(|p| p.parse::<u32>().ok()),
            other => {
                tally.abnormal(format!("socket {index}: no greeting: {other:?}"));
                return;
            }
        };
        let Some(pid) = pid else {
            tally.abnormal(format!("socket {index}: a greeting without a pid"));
            return;
        };
        if closed_by == Some(pid) {
            tally
                .landed_on_old
                .lock()
                .unwrap()
                .push(format!("socket {index} reconnected to pid {pid}"));
        }
        tally.connected.lock().unwrap()[index] = Some(pid);
        let mut resend = closed_by.is_some();
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = socket.close(None).await;
                tally.connected.lock().unwrap()[index] = None;
                return;
            }
            let text = format!("{index}-{seq}");
            if socket.send(Message::text(text.clone())).await.is_err() {
                tally.abnormal(format!("socket {index}: send of {text} failed"));
                return;
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
                    tally.connected.lock().unwrap()[index] = None;
                    tally.going_away.lock().unwrap().push(pid);
                    // The close handshake completes: the stream ends without an error.
                    while let Some(next) = socket.next().await {
                        if let Err(e) = next {
                            tally.abnormal(format!("socket {index}: after the close: {e}"));
                            return;
                        }
                    }
                    closed_by = Some(pid);
                    // `seq` was not answered: it is sent again on the next socket.
                    continue 'connections;
                }
                other => {
                    tally.abnormal(format!("socket {index}: awaiting {text}: {other:?}"));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_hundred_websockets_are_closed_with_1001_at_each_of_five_restarts_and_reconnect_to_the_new_worker(
) {
    let service = Service::serving(Options {
        example: "websocket",
        ..Default::default()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally {
        connected: Mutex::new(vec![None; SOCKETS]),
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("ws://127.0.0.1:{}/ws", service.port);
    let clients: Vec<_> = (0..SOCKETS)
        .map(|i| runtime.spawn(client(i, url.clone(), tally.clone(), stop.clone())))
        .collect();
    let on = |pid: u32| {
        let tally = tally.clone();
        move || {
            tally
                .connected
                .lock()
                .unwrap()
                .iter()
                .all(|p| *p == Some(pid))
        }
    };
    let first = service.worker_pid();
    wait_until(
        "the 200 sockets did not all connect",
        Duration::from_secs(30),
        on(first),
        || service.log(),
    );
    let mut workers = vec![first];
    for restart in 1..=RESTARTS {
        let old = *workers.last().unwrap();
        let new = service.restart();
        workers.push(new);
        wait_until(
            &format!("restart {restart}: the sockets did not all move to pid {new}"),
            Duration::from_secs(30),
            on(new),
            || service.log(),
        );
        // Every socket closed, so the old worker's drain is over: it exits at once.
        wait_until(
            &format!("restart {restart}: old worker {old} still alive"),
            Duration::from_secs(10),
            || !util::alive(old),
            || service.log(),
        );
        assert!(
            tally.abnormal.lock().unwrap().is_empty(),
            "{:?}",
            tally.abnormal.lock().unwrap()
        );
    }
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            tokio::time::timeout(Duration::from_secs(10), client)
                .await
                .expect("a client stops")
                .unwrap();
        }
    });

    let abnormal = tally.abnormal.lock().unwrap();
    assert!(
        abnormal.is_empty(),
        "{} sockets saw something else than a 1001 close: {:?}",
        abnormal.len(),
        &abnormal[..abnormal.len().min(10)]
    );
    let going_away = tally.going_away.lock().unwrap();
    assert_eq!(
        going_away.len(),
        SOCKETS * RESTARTS,
        "one 1001 close per socket and restart"
    );
    for old in &workers[..RESTARTS] {
        assert_eq!(
            going_away.iter().filter(|p| *p == old).count(),
            SOCKETS,
            "worker {old} closed each of its sockets once"
        );
    }
    assert!(
        tally.landed_on_old.lock().unwrap().is_empty(),
        "{:?}",
        tally.landed_on_old.lock().unwrap()
    );
    // At most the one message in flight per close was unanswered, and it was answered by the
    // next worker: the sequence numbers never skipped (a wrong echo is abnormal above).
    assert!(tally.resent.load(Ordering::SeqCst) <= SOCKETS * RESTARTS);
    assert!(tally.echoed.load(Ordering::SeqCst) >= SOCKETS * (RESTARTS + 1));
    let distinct: HashSet<u32> = workers.iter().copied().collect();
    assert_eq!(distinct.len(), RESTARTS + 1);
    assert!(service.log().contains("draining connections"));
}
