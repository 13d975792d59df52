//! The HTTP fetcher end to end: a service under handover polls a URL on 127.0.0.1 and upgrades
//! when the file behind it changes; a failing server never disturbs it.
#![cfg(feature = "http")]

#[path = "../fetchers/http/tests/support/mod.rs"]
mod support;
mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Reply, Server};
use util::load::{Load, Protocol};
use util::{Options, Service};

/// What the fixture serves: the binary, and whether to fail.
struct Published {
    binary: Vec<u8>,
    failure: Option<&'static str>,
}

fn serve(published: Arc<Mutex<Published>>) -> (tokio::runtime::Runtime, Server) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(Server::start(move |request| {
        let published = published.lock().unwrap();
        let digest = util::sha256_hex(&published.binary);
        match (request.path.as_str(), published.failure) {
            (_, Some("500")) => Reply::status(500),
            ("/releases/app", Some("cut")) => Reply::ok(published.binary.clone()).cut_after(1000),
            ("/releases/app", _) => {
                let etag = format!("\"{digest}\"");
                if request.header("if-none-match").map(|v| v.to_string()) == Some(etag.clone()) {
                    Reply::status(304)
                } else {
                    Reply::ok(published.binary.clone()).header("etag", etag)
                }
            }
            ("/releases/SHA256SUMS", _) => Reply::ok(format!("{digest}  app\n")),
            _ => Reply::status(404),
        }
    }));
    (runtime, server)
}

fn service_polling(server: &Server) -> Service {
    let config = format!(
        "fetcher = \"http\"\n[upgrade]\ninterval = \"500ms\"\nmax_backoff = \"1s\"\nprobation = \"2s\"\n[http]\nurl = \"{}\"\nchecksum_url = \"{}\"\nallow_insecure_loopback = true\n",
        server.url("/releases/app"),
        server.url("/releases/SHA256SUMS")
    );
    Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    })
}

#[test]
fn a_new_file_at_the_url_upgrades_the_service_with_zero_failed_requests() {
    let published = Arc::new(Mutex::new(Published {
        binary: util::with_trailer(&util::example("testbed"), "http-0"),
        failure: None,
    }));
    let (_runtime, server) = serve(published.clone());
    let service = service_polling(&server);
    let master = service.pid();
    let load = Load::start(service.addr(), 64, Protocol::Http1, "/");
    load.wait_progress(300);
    let new = published.lock().unwrap().binary.clone();
    service.wait_for_sha(&util::sha256_hex(&new));
    load.wait_progress(300);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.pid(), master);
    // Installed: later polls ask for the binary conditionally and download nothing, also
    // after the master re-executed into the new binary (the fetcher's validators go with it).
    service.wait_log("upgrade passed probation", Duration::from_secs(10));
    service.wait_log("master upgraded in place", Duration::from_secs(10));
    let polls = server.requests_for("/releases/app").len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        server.requests_for("/releases/app").len() >= polls + 2,
        "the fetcher stopped polling"
    );
    assert_eq!(
        service.log_count("downloaded candidate"),
        1,
        "the binary was downloaded again:\n{}",
        service.log()
    );
}

#[test]
fn a_failing_server_is_retried_and_never_disturbs_the_running_worker() {
    let published = Arc::new(Mutex::new(Published {
        binary: Vec::new(),
        failure: Some("500"),
    }));
    let (_runtime, server) = serve(published.clone());
    let service = service_polling(&server);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    service.wait_log("fetch failed; still serving", Duration::from_secs(20));
    service.assert_untouched(&live, worker, "server answering 500");

    // Closing mid-body: not installed, and offered again (not forgotten) once the server heals.
    let new = util::with_trailer(&service.bin, "http-cut");
    *published.lock().unwrap() = Published {
        binary: new.clone(),
        failure: Some("cut"),
    };
    service.wait_log("could not take", Duration::from_secs(20));
    assert_eq!(std::fs::read(&service.bin).unwrap(), live);
    published.lock().unwrap().failure = None;
    service.wait_for_sha(&util::sha256_hex(&new));
}
