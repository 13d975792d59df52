//! An axum application under handover: the router is served by `handover::http::serve`, so it
//! drains without failed requests on every restart and upgrade.
//!
//! ```text
//! PORT=8080 cargo run --example axum
//! curl 127.0.0.1:8080/          # hello from axum, pid=… worker=…
//! kill -USR2 <master pid>       # zero-downtime restart
//! ```

use std::time::Duration;

use axum::routing::get;
use hyper_util::service::TowerToHyperService;

fn main() -> std::process::ExitCode {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let config = handover::Config::builder()
        .listen_tcp("http", ([127, 0, 0, 1], port).into())
        .build();
    let result = config.and_then(|config| {
        handover::Handover::new(config)
            .version(env!("CARGO_PKG_VERSION"))
            .run(|worker| async move {
                let listener = worker.tcp("http")?;
                let line = format!(
                    "hello from axum, pid={} worker={}\n",
                    std::process::id(),
                    worker.id()
                );
                let app = axum::Router::new()
                    .route("/", get(move || std::future::ready(line.clone())))
                    .route(
                        "/sleep",
                        get(|| async {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            "slept 500ms\n"
                        }),
                    );
                // axum's Router is a tower Service; hyper-util adapts it to hyper's.
                handover::http::serve(&worker, listener, TowerToHyperService::new(app)).await
            })
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("axum example: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
