//! Staged rollouts through a release store shared by a fleet (a directory, a bucket in moto,
//! `handover rollout serve`, the fake GitHub, etcd): 5 real masters and 45 in-process simulated hosts read the same signed manifest
//! (written by `handover rollout`) and write reports beside it. A good release reaches 100 %
//! step by step; a bad one (it crashes after ready) halts itself after its first cohort, and
//! the hosts outside that cohort never take it.

#[cfg(feature = "delta")]
#[path = "rollout/delta.rs"]
mod delta;
#[cfg(feature = "github")]
#[path = "../fetchers/github/tests/support/mod.rs"]
mod fake;
#[path = "rollout/fleet.rs"]
mod fleet;
#[cfg(feature = "github")]
#[path = "rollout/github.rs"]
mod github;
#[cfg(feature = "s3")]
#[path = "../fetchers/s3/tests/util/mod.rs"]
mod s3util;
#[cfg(feature = "http")]
#[path = "rollout/served.rs"]
mod served;
#[path = "rollout/status.rs"]
mod status;
mod util;

use std::time::{Duration, Instant, SystemTime};

use fleet::{hosts, Backend, Fleet};
use handover::rollout;
use status::{control_status, has_line, wait_status};

#[test]
fn a_good_release_reaches_every_host_step_by_step() {
    good_release(Backend::Dir);
}

#[cfg(feature = "s3")]
#[test]
fn a_good_release_reaches_every_host_step_by_step_on_s3() {
    good_release(Backend::S3);
}

#[test]
fn a_bad_release_halts_itself_after_the_first_cohort() {
    bad_release(Backend::Dir);
}

#[cfg(feature = "s3")]
#[test]
fn a_bad_release_halts_itself_after_the_first_cohort_on_s3() {
    bad_release(Backend::S3);
}

#[cfg(feature = "http")]
#[test]
fn a_good_release_reaches_every_host_step_by_step_over_http() {
    good_release(Backend::Http);
}

#[cfg(feature = "http")]
#[test]
fn a_bad_release_halts_itself_after_the_first_cohort_over_http() {
    bad_release(Backend::Http);
}

/// `handover rollout serve --token-file`: a write without the token is refused, with it stored;
/// reads need none.
#[cfg(feature = "http")]
#[test]
fn the_http_store_refuses_a_write_without_its_token() {
    use handover::fetcher::Store;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let served = served::Served::start(dir.path(), &["--token-file".as_ref(), token.as_os_str()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let name = "reports/abc/h1.json";
        let mut anonymous = served::http_store(&served.base, None);
        let err = anonymous.put(name, b"{}".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        let mut wrong = served::http_store(&served.base, Some("guess"));
        assert!(wrong.put(name, b"{}".to_vec()).await.is_err());
        assert!(!dir.path().join(name).exists());
        let mut host = served::http_store(&served.base, Some("s3cret"));
        host.put(name, b"{\"a\":1}".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"{\"a\":1}");
        let listed = anonymous.list("reports/abc/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            anonymous.get(name).await.unwrap().as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        // Names that leave the directory never reach a file outside it.
        assert!(host.put("../escape.json", b"{}".to_vec()).await.is_err());
        assert!(!dir.path().parent().unwrap().join("escape.json").exists());
    });
}

/// A store that refuses to say whether there is a manifest (S3's 403 to a reader that may not
/// list the bucket) on a host that never saw one: upgrades go on unstaged, and status says why.
#[cfg(feature = "s3")]
#[test]
fn a_manifest_the_store_refuses_to_show_leaves_a_new_host_unstaged_and_says_so() {
    let fleet = Fleet::new(Backend::S3);
    fleet
        .runtime
        .block_on(fleet.bucket().deny_get("releases/rollout.json"));
    let (service, socket) = fleet.master("solo");
    wait_status(&socket, "cannot read rollout.json");
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let file = fleet.stage(&good);
    fleet.publish_signed(&file, &good);
    service.wait_for_sha(&util::sha256_hex(&good));
    let shown = control_status(&socket);
    assert!(
        shown.contains("upgrades are not staged on this host"),
        "{shown}"
    );
}

/// A store that goes down is backed off from like a failed fetch; nothing is installed.
#[cfg(feature = "http")]
#[test]
fn a_store_that_goes_down_is_backed_off_from_like_a_failed_fetch() {
    let mut fleet = Fleet::new(Backend::Http);
    let (service, _socket) = fleet.master("solo");
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    fleet.stop_server();
    let log = service.wait_log("fetch failed; still serving", Duration::from_secs(20));
    let line = log
        .lines()
        .find(|l| l.contains("fetch failed; still serving"))
        .unwrap();
    assert!(
        line.contains("rollout.json"),
        "the store's URL is named: {line}"
    );
    assert!(line.contains("retry_in"), "{line}");
    service.assert_untouched(&live, worker, "store unreachable");
}

#[cfg(feature = "github")]
#[test]
fn a_good_release_reaches_every_host_step_by_step_on_github() {
    good_release(Backend::Github);
}

#[cfg(feature = "github")]
#[test]
fn a_bad_release_halts_itself_after_the_first_cohort_on_github() {
    bad_release(Backend::Github);
}

#[cfg(all(feature = "etcd", feature = "http"))]
#[test]
fn a_good_release_reaches_every_host_step_by_step_on_etcd() {
    good_release(Backend::Etcd);
}

#[cfg(all(feature = "etcd", feature = "http"))]
#[test]
fn a_bad_release_halts_itself_after_the_first_cohort_on_etcd() {
    bad_release(Backend::Etcd);
}

fn good_release(backend: Backend) {
    let fleet = Fleet::new(backend);
    let base = std::fs::read(util::example("testbed")).unwrap();
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let sha = util::sha256_hex(&good);
    // Five real masters: two in the first step (10 %), two in the second (50 %), one last.
    let mut real = hosts("real", &sha, 2, |b| b < 1_000);
    real.extend(hosts("real", &sha, 2, |b| (1_000..5_000).contains(&b)));
    real.extend(hosts("real", &sha, 1, |b| b >= 5_000));
    let masters: Vec<_> = real.iter().map(|h| fleet.master(h)).collect();
    let mut simulated = fleet.simulated((0..45).map(|i| format!("sim-{i}")).collect());

    // Steps far longer than the test: `handover rollout promote` moves them on.
    fleet.publish_and_start(&good, "10%:1h,50%:1h,100%", 3);
    let size = good.len() as u64;
    let turn_of = |host: &str| {
        [10.0, 50.0, 100.0]
            .iter()
            .position(|p| rollout::covers(*p, rollout::bucket(host, &sha)))
            .unwrap()
    };
    let real_turns = [0, 0, 1, 1, 2];
    for step in 0..3 {
        let in_step = simulated
            .iter()
            .filter(|s| turn_of(s.host()) <= step)
            .count()
            + real_turns.iter().filter(|t| **t <= step).count();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            fleet.poll_all(&mut simulated, size);
            let status = fleet.status_json();
            if status["ready"] == in_step || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Everyone whose step it is took the release; nobody else did.
        let status = fleet.status_json();
        assert_eq!(status["ready"], in_step, "step {}: {status:#}", step + 1);
        assert_eq!(status["step"], step + 1);
        for sim in &simulated {
            assert_eq!(
                sim.took.is_some(),
                turn_of(sim.host()) <= step,
                "{} at step {}",
                sim.host(),
                step + 1
            );
        }
        for (i, (service, _)) in masters.iter().enumerate() {
            let runs_it = service.served_sha() == sha[..12];
            assert_eq!(
                runs_it,
                real_turns[i] <= step,
                "{} at step {}",
                real[i],
                step + 1
            );
        }
        if step < 2 {
            assert!(fleet.cli(&["promote"], None).contains("promoted"));
        }
    }
    let status = fleet.status_json();
    assert_eq!(
        status["ready"], 50,
        "every host serves the release: {status:#}"
    );
    assert_eq!(status["rolled_back"], 0);
    // Once a host runs the release, a poll is one request (the manifest, a 304 on S3): no
    // signature, no listing of the fleet's reports, no report rewritten.
    let before: Vec<u64> = simulated.iter().map(|s| s.follower.requests()).collect();
    for _ in 0..3 {
        fleet.poll_all(&mut simulated, size);
    }
    for (sim, before) in simulated.iter().zip(before) {
        assert_eq!(sim.follower.requests() - before, 3, "{}", sim.host());
    }
    assert_eq!(status["halted"], serde_json::Value::Null);
    assert_ne!(util::sha256_hex(&base), sha);
    let table = fleet.cli(&["status"], None);
    assert!(has_line(&table, &["ready", "50"]), "{table}");
    assert!(table.contains("3 of 3 (100 % of hosts"), "{table}");
}

fn bad_release(backend: Backend) {
    let fleet = Fleet::new(backend);
    // A newer version (GitHub offers a release by its tag) that crashes after ready.
    let mut bad = util::with_trailer(&util::example("testbed"), "crash-after-ready:300");
    bad.extend_from_slice(b"\nHANDOVER-FAULT:version:0.2.0\n");
    let sha = util::sha256_hex(&bad);
    // Three real masters in the first step (10 %), two outside the second one (50 %).
    let mut real = hosts("real", &sha, 3, |b| b < 1_000);
    real.extend(hosts("real", &sha, 2, |b| b >= 5_000));
    let masters: Vec<_> = real.iter().map(|h| fleet.master(h)).collect();
    let old_sha = masters[3].0.served_sha();
    // Simulated hosts outside the first cohort.
    let mut simulated = fleet.simulated(hosts("sim", &sha, 45, |b| b >= 1_000));

    // The halt rule halts at 3 hosts. Once halted, the publisher promotes the rollout to
    // 100 %: it stays halted, and no host outside the first cohort takes the release.
    fleet.publish_and_start(&bad, "10%:1h,50%:1h,100%", 3);
    let size = bad.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.status_json()["halted"].is_null() && Instant::now() < deadline {
        fleet.poll_all(&mut simulated, size);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fleet
        .cli(&["promote"], None)
        .contains("promoted (serial 2)"));
    assert!(fleet
        .cli(&["promote"], None)
        .contains("promoted (serial 3)"));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        fleet.poll_all(&mut simulated, size);
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = fleet.status_json();
    assert_eq!(status["rolled_back"], 3, "{status:#}");
    assert_eq!(status["ready"], 0, "{status:#}");
    assert!(
        status["halted"].as_str().unwrap_or("").contains("3 hosts"),
        "{status:#}"
    );
    assert_eq!(status["step"], 3, "the halt holds at 100 %: {status:#}");
    for sim in &simulated {
        assert!(sim.took.is_none(), "{} took the bad release", sim.host());
    }
    for (service, socket) in &masters[3..] {
        assert_eq!(
            service.served_sha(),
            old_sha,
            "a host outside the first cohort kept its binary"
        );
        assert!(
            service.log_count("downloaded candidate") == 0,
            "and never downloaded it"
        );
        let shown = control_status(socket);
        assert!(
            shown.contains("rollout: release") && shown.contains("HALTED"),
            "{shown}"
        );
    }
    for (service, socket) in &masters[..3] {
        assert_eq!(service.served_sha(), old_sha, "the cohort rolled back");
        let shown = control_status(socket);
        assert!(
            shown.contains("rolled release") && shown.contains("back"),
            "{shown}"
        );
    }
    // The publisher sees why, resumes (earlier failures stop counting), and halts by hand.
    let table = fleet.cli(&["status"], None);
    assert!(
        table.contains("HALTED") && has_line(&table, &["rolled-back", "3"]),
        "{table}"
    );
    assert!(fleet
        .cli(&["halt", "--reason", "bad build"], None)
        .contains("halted (serial 4)"));
    assert_eq!(
        fleet.status_json()["halted"],
        "halted by the publisher: bad build"
    );
    assert!(fleet.cli(&["resume"], None).contains("resumed (serial 5)"));
    assert_eq!(fleet.status_json()["halted"], serde_json::Value::Null);
}

#[test]
fn an_unsigned_or_replayed_manifest_stops_upgrades_with_the_reason_and_a_valid_one_installs() {
    let fleet = Fleet::new(Backend::Dir);
    let (mut service, socket) = fleet.master("solo");
    let old_sha = service.served_sha();
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let sha = util::sha256_hex(&good);

    // An unsigned manifest, with the release published and signed: nothing is installed, and
    // status says why.
    let start = SystemTime::now();
    let unsigned = rollout::Manifest::new(
        rollout::Release::new(None, sha.clone()),
        start,
        vec![rollout::Step::new(100.0, None)],
        start + Duration::from_secs(3600),
    );
    std::fs::write(fleet.path(rollout::MANIFEST), unsigned.to_json()).unwrap();
    let file = fleet.stage(&good);
    fleet.publish_signed(&file, &good);
    wait_status(
        &socket,
        "rollout.json.minisig is missing, and upgrade.public_keys is set",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(service.served_sha(), old_sha);
    assert_eq!(
        service.log_count("downloaded candidate"),
        0,
        "nothing was even downloaded"
    );

    // The publisher signs it: the release is installed.
    let out = fleet.cli(&["start", "--steps", "100%"], Some(&file));
    assert!(out.contains("started (serial 1)"), "{out}");
    service.wait_for_sha(&sha);
    wait_status(&socket, "runs here");

    // The serial-1 manifest is kept, the publisher halts (serial 2), and the old one is
    // replayed: refused, also after a SIGKILL of the master.
    let kept = (
        std::fs::read(fleet.path(rollout::MANIFEST)).unwrap(),
        std::fs::read(fleet.path(rollout::SIGNATURE)).unwrap(),
    );
    assert!(fleet
        .cli(&["halt", "--reason", "hold"], None)
        .contains("serial 2"));
    wait_status(&socket, "halted by the publisher: hold");
    std::fs::write(fleet.path(rollout::SIGNATURE), &kept.1).unwrap();
    std::fs::write(fleet.path(rollout::MANIFEST), &kept.0).unwrap();
    let replayed = "serial 1 is older than serial 2 seen before";
    wait_status(&socket, replayed);
    service.kill_all();
    service.spawn_master();
    service.wait_serving();
    wait_status(&socket, replayed);
    assert_eq!(service.served_sha(), sha[..12]);
}
