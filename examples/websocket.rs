//! WebSockets under handover: an axum echo service whose sockets survive the drain helper and
//! are closed politely when the worker drains.
//!
//! `GET /` answers `pid=<pid> worker=<id> sha256=<hash>` like `hello`; `GET /ws` is an echo WebSocket that
//! first sends `pid=<pid>`. When a restart or an upgrade drains this worker, every socket gets a
//! close frame with code 1001 ("going away"), so clients reconnect (to the new worker) without an
//! error. `GET /ws/linger` is the same echo but ignores the drain, as a careless application
//! would: the worker then lives until the listener's drain timeout, which cuts it.
//!
//! ```text
//! PORT=8080 cargo run --example websocket
//! websocat ws://127.0.0.1:8080/ws    # pid=…, then echoes
//! kill -USR2 <master pid>            # the socket is closed with 1001; reconnect lands anew
//! ```

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use handover::Shutdown;
use hyper_util::service::TowerToHyperService;

/// How long a socket waits for the client's answer to its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;

fn main() -> std::process::ExitCode {
    common::init_logging();
    let config = common::config_from_env();
    let result = config.and_then(|config| {
        handover::Handover::new(config)
            .version(env!("CARGO_PKG_VERSION"))
            .run(|worker| async move {
                let listener = worker.tcp("http")?;
                let line = format!(
                    "pid={} worker={} sha256={}\n",
                    std::process::id(),
                    worker.id(),
                    &worker.binary_sha256()[..12]
                );
                let polite = worker.shutdown_signal();
                let app = axum::Router::new()
                    .route("/", get(move || std::future::ready(line.clone())))
                    .route(
                        "/ws",
                        get(move |upgrade: WebSocketUpgrade| {
                            let shutdown = polite.clone();
                            std::future::ready(accept(upgrade, Some(shutdown)))
                        }),
                    )
                    .route(
                        "/ws/linger",
                        get(|upgrade: WebSocketUpgrade| std::future::ready(accept(upgrade, None))),
                    );
                handover::http::serve(&worker, listener, TowerToHyperService::new(app)).await
            })
    });
    common::exit_code("websocket", result)
}

fn accept(upgrade: WebSocketUpgrade, shutdown: Option<Shutdown>) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, shutdown))
}

/// Greets with the pid, echoes every message, and on drain closes with 1001.
async fn echo(mut socket: WebSocket, shutdown: Option<Shutdown>) {
    let greeting = format!("pid={}", std::process::id());
    if socket.send(Message::Text(greeting.into())).await.is_err() {
        return;
    }
    let draining = async {
        match shutdown {
            Some(shutdown) => shutdown.wait().await,
            None => std::future::pending().await,
        }
    };
    let mut draining = std::pin::pin!(draining);
    loop {
        tokio::select! {
            // A message already read is echoed before the close is sent.
            biased;
            message = socket.recv() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
            _ = &mut draining => break,
        }
    }
    let close = CloseFrame {
        code: close_code::AWAY,
        reason: "server restarting".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    // The close handshake: read until the client's close (messages it sent meanwhile cannot
    // be answered any more: RFC 6455 allows no data after a close frame).
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
