//! The HTTP fetcher's store (`store_url`) against a fixture server: the manifest asked for with
//! `If-None-Match` once held, documents written with `PUT` and the bearer token, a listing as
//! JSON, and names that would leave the base refused before any request.

mod support;

use handover_fetcher::Fetcher;
use handover_fetcher_http::{HttpConfig, HttpFetcher};
use support::{Reply, Server};

#[tokio::test]
async fn the_store_beside_the_url_speaks_the_documented_protocol() {
    let server = Server::start(|request| match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/releases/rollout.json") => {
            if request.header("if-none-match") == Some("\"m1\"") {
                Reply::status(304)
            } else {
                Reply::ok(&b"{\"v\":1}"[..]).header("etag", "\"m1\"")
            }
        }
        ("GET", "/releases/reports/abc/") if request.header("accept") == Some("application/json") => {
            Reply::ok(
                &br#"[{"name":"reports/abc/h1.json","etag":"t1"},{"name":"elsewhere/x","etag":"t2"}]"#[..],
            )
        }
        ("PUT", "/releases/reports/abc/h1.json") => Reply::status(204),
        _ => Reply::status(404),
    })
    .await;
    let config = HttpConfig::new(server.url("/releases/app"))
        .allow_insecure_loopback(true)
        .with_token("sekrit");
    assert!(
        HttpFetcher::new(config.clone()).unwrap().store().is_none(),
        "no store_url: not staged"
    );
    let mut config = config;
    config.store_url = Some(server.url("/releases/"));
    let mut fetcher = HttpFetcher::new(config).unwrap();
    let store = fetcher.store().expect("the HTTP fetcher has a store");
    assert_eq!(
        store.locate("rollout.json"),
        server.url("/releases/rollout.json")
    );

    for _ in 0..2 {
        let manifest = store.get("rollout.json").await.unwrap();
        assert_eq!(manifest.as_deref(), Some(&b"{\"v\":1}"[..]));
    }
    let reads = server.requests_for("/releases/rollout.json");
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0].header("if-none-match"), None);
    assert_eq!(
        reads[1].header("if-none-match"),
        Some("\"m1\""),
        "held: a 304"
    );
    assert_eq!(reads[1].header("authorization"), Some("Bearer sekrit"));

    assert_eq!(store.get("rollout.json.minisig").await.unwrap(), None);
    let listed = store.list("reports/abc/").await.unwrap();
    assert_eq!(listed.len(), 1, "only names under the prefix: {listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].tag.as_str()),
        ("reports/abc/h1.json", "t1")
    );
    assert!(
        store.list("reports/none/").await.unwrap().is_empty(),
        "404: none"
    );

    store
        .put("reports/abc/h1.json", b"{}".to_vec())
        .await
        .unwrap();
    let written = server.requests_for("/releases/reports/abc/h1.json");
    assert_eq!(written[0].method, "PUT");
    assert_eq!(written[0].header("authorization"), Some("Bearer sekrit"));
    let err = store
        .put("reports/abc/h2.json", b"{}".to_vec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    let before = server.requests().len();
    for bad in [
        "",
        "/abs",
        "../up",
        "reports/../x",
        "a//b",
        "a?b=1",
        "a%2e%2e",
    ] {
        let err = store.get(bad).await.unwrap_err().to_string();
        assert!(err.contains("relative path"), "{bad:?}: {err}");
    }
    assert_eq!(
        server.requests().len(),
        before,
        "refused before any request"
    );
}
