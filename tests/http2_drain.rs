//! HTTP/2 through restarts, seen frame by frame with the `h2` client: no stream the client sent
//! breaks or is refused, and what the client declined to send after a GOAWAY goes, sent again,
//! to a new connection.
//!
//! The drain sends h2's two-phase GOAWAY: first with the highest stream id (and a PING), then,
//! once the PING is answered, the real last stream id. A stream the client opened before it
//! saw the first GOAWAY is below that last id, so it is served. A server that sent the real last
//! id at once would refuse many of the streams crossing it, and one that closed its connections
//! would break the streams in flight (this fails the test: checked by making the drain drop
//! HTTP/2 connections).

mod util;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use util::{Options, Service};

const CONNECTIONS: usize = 32;
const STREAMS_PER_CONNECTION: usize = 4;
const RESTARTS: usize = 5;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Not sent: the connection had seen a GOAWAY (sent again on a new connection).
    declined: AtomicUsize,
    /// Sent, then refused by the server.
    refused: Mutex<Vec<String>>,
    /// Anything else that went wrong.
    failed: Mutex<Vec<String>>,
    goaways_seen: AtomicUsize,
}

/// Whether `error` is the server's graceful GOAWAY.
fn graceful_goaway(error: &h2::Error) -> bool {
    error.is_go_away() && error.is_remote() && error.reason() == Some(h2::Reason::NO_ERROR)
}

/// One request on a connection of its own.
async fn once(port: u16, path: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (client, driver) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    let mut sender = client.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::get(format!("http://127.0.0.1{path}"))
        .body(())
        .unwrap();
    let (response, _) = sender
        .send_request(request, true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(())
}

async fn connection(index: usize, port: u16, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut carried: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(tcp) => tcp,
            Err(e) => return tally.failed.lock().unwrap().push(format!("connect: {e}")),
        };
        let (client, driver) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(e) => return tally.failed.lock().unwrap().push(format!("handshake: {e}")),
        };
        let driver = tokio::spawn(driver);
        let mut streams = tokio::task::JoinSet::new();
        let mut seq = 0usize;
        let mut going_away = false;
        while !stop.load(Ordering::SeqCst) && !going_away {
            while streams.len() < STREAMS_PER_CONNECTION {
                let path = carried.take().unwrap_or_else(|| {
                    seq += 1;
                    // One stream in four is slow, so streams are in flight at every GOAWAY.
                    if (index + seq).is_multiple_of(4) {
                        "/sleep?ms=150".to_string()
                    } else {
                        "/".to_string()
                    }
                });
                let mut sender = match client.clone().ready().await {
                    Ok(sender) => sender,
                    Err(e) if graceful_goaway(&e) => {
                        tally.declined.fetch_add(1, Ordering::SeqCst);
                        carried = Some(path);
                        going_away = true;
                        break;
                    }
                    Err(e) => {
                        tally.failed.lock().unwrap().push(format!("ready: {e}"));
                        return;
                    }
                };
                let request = hyper::Request::get(format!("http://127.0.0.1{path}"))
                    .body(())
                    .unwrap();
                match sender.send_request(request, true) {
                    Ok((response, _)) => {
                        let tally = tally.clone();
                        streams.spawn(async move {
                            match response.await {
                                Ok(response) if response.status() == 200 => {
                                    let mut body = response.into_body();
                                    while let Some(chunk) = body.data().await {
                                        match chunk {
                                            Ok(chunk) => {
                                                let _ = body
                                                    .flow_control()
                                                    .release_capacity(chunk.len());
                                            }
                                            Err(e) => {
                                                let what = format!("{path}: body: {e}");
                                                return tally.failed.lock().unwrap().push(what);
                                            }
                                        }
                                    }
                                    tally.ok.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(response) => tally
                                    .failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("{path}: status {}", response.status())),
                                Err(e) if graceful_goaway(&e) => {
                                    // Above the final GOAWAY's last stream id: never processed
                                    // (RFC 9113 6.8), so safe to send again.
                                    tally.refused.lock().unwrap().push(format!("{path}: {e}"));
                                    if let Err(why) = once(port, &path).await {
                                        let what = format!("{path}: sent again: {why}");
                                        tally.failed.lock().unwrap().push(what);
                                    }
                                }
                                Err(e) => tally.failed.lock().unwrap().push(format!("{path}: {e}")),
                            }
                        });
                    }
                    Err(e) if graceful_goaway(&e) => {
                        // h2 refuses to open a stream once a GOAWAY arrived: never sent.
                        tally.declined.fetch_add(1, Ordering::SeqCst);
                        carried = Some(path);
                        going_away = true;
                    }
                    Err(e) => {
                        tally.failed.lock().unwrap().push(format!("send: {e}"));
                        return;
                    }
                }
            }
            if !going_away {
                streams.join_next().await;
            }
        }
        if going_away {
            tally.goaways_seen.fetch_add(1, Ordering::SeqCst);
        }
        // The streams sent on this connection all finish; then the server closes it.
        while streams.join_next().await.is_some() {}
        drop(client);
        match tokio::time::timeout(Duration::from_secs(10), driver).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if graceful_goaway(&e) || stop.load(Ordering::SeqCst) => {}
            other => tally
                .failed
                .lock()
                .unwrap()
                .push(format!("connection {index} ended: {other:?}")),
        }
    }
}

#[test]
fn no_http2_stream_a_client_sent_breaks_or_is_refused_across_restarts() {
    let service = Service::serving(Options::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| runtime.spawn(connection(i, service.port, tally.clone(), stop.clone())))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..RESTARTS {
        service.restart();
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            tokio::time::timeout(Duration::from_secs(15), client)
                .await
                .expect("a client stops")
                .unwrap();
        }
    });
    let failed = tally.failed.lock().unwrap();
    let refused = tally.refused.lock().unwrap();
    let ok = tally.ok.load(Ordering::SeqCst);
    let declined = tally.declined.load(Ordering::SeqCst);
    eprintln!(
        "{ok} streams answered, {} sent and refused, {declined} declined unsent after a GOAWAY and sent again, {} failed",
        refused.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(10)]);
    // h2's client writes its PING ack ahead of a stream it queued just before it read the first
    // GOAWAY; without the drain holding that ack back (src/http/ping_ack.rs), h2's server sent
    // the final GOAWAY on it and refused such a stream: 0 to 3 in 7,400 here.
    assert!(
        refused.is_empty(),
        "streams refused after they were sent: {:?}",
        &refused[..refused.len().min(10)]
    );
    // Every connection was told to go away at every restart, and moved.
    assert!(
        tally.goaways_seen.load(Ordering::SeqCst) >= CONNECTIONS * RESTARTS,
        "GOAWAYs seen: {}",
        tally.goaways_seen.load(Ordering::SeqCst)
    );
    assert!(ok > CONNECTIONS * RESTARTS * STREAMS_PER_CONNECTION);
}
