//! The fetcher's store against a real S3-compatible server (moto): documents beside the
//! watched key, whole and by prefix, and the manifest read with `If-None-Match` on every poll.

mod util;

use handover_fetcher::Fetcher;
use util::Server;

#[tokio::test]
async fn documents_live_beside_the_key_and_an_unchanged_one_costs_a_304() {
    let server = Server::start();
    let bucket = server.bucket("store").await;
    let mut fetcher = server.fetcher(&bucket, "releases/app", |_| {});
    let store = fetcher.store().expect("the S3 fetcher has a store");
    assert_eq!(
        store.locate("rollout.json"),
        format!("s3://{}/releases/rollout.json", bucket.name)
    );
    assert_eq!(store.get("rollout.json").await.unwrap(), None);

    store
        .put("rollout.json", b"{\"v\":1}".to_vec())
        .await
        .unwrap();
    store
        .put("reports/abc/web-1.json", b"one".to_vec())
        .await
        .unwrap();
    store
        .put("reports/abc/web-2.json", b"two".to_vec())
        .await
        .unwrap();
    store
        .put("reports/abd/web-1.json", b"other".to_vec())
        .await
        .unwrap();
    // Beside the key: what another client sees at releases/.
    let object = bucket
        .client
        .get_object()
        .bucket(&bucket.name)
        .key("releases/rollout.json")
        .send()
        .await
        .unwrap();
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"{\"v\":1}");

    let mut listed = store.list("reports/abc/").await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["reports/abc/web-1.json", "reports/abc/web-2.json"]);
    assert_ne!(listed[0].tag, listed[1].tag, "tags are the contents' ETags");
    let before = listed[0].tag.clone();
    store
        .put("reports/abc/web-1.json", b"rewritten".to_vec())
        .await
        .unwrap();
    let again = store.list("reports/abc/").await.unwrap();
    let tag = &again
        .iter()
        .find(|l| l.name.ends_with("web-1.json"))
        .unwrap()
        .tag;
    assert_ne!(*tag, before, "a rewrite changes the tag");
    assert_eq!(
        store
            .get("reports/abc/web-1.json")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"rewritten"[..])
    );

    // The first read of the manifest holds it; the next ones are conditional: 304, no body.
    assert!(store.get("rollout.json").await.unwrap().is_some());
    if server.is_moto() {
        let mark = server.log_mark();
        let bytes = store.get("rollout.json").await.unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"{\"v\":1}"[..]));
        let path = format!("\"GET /{}/releases/rollout.json", bucket.name);
        let requests = server.requests_since(mark, &path);
        assert_eq!(requests.len(), 1, "{requests:#?}");
        assert!(
            requests[0].contains(&path) && requests[0].contains("HTTP/1.1\" 304"),
            "{requests:#?}"
        );
    }
    // A replaced manifest is read whole again.
    store
        .put("rollout.json", b"{\"v\":2}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get("rollout.json").await.unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );

    for bad in ["", "/abs", "../up", "reports/../x", "a//b"] {
        let err = store.get(bad).await.unwrap_err().to_string();
        assert!(err.contains("relative path"), "{bad:?}: {err}");
    }
}
