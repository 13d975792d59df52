//! Hostile inputs and faults: signatures, downgrades, a full disk, the master killed at each
//! step of an upgrade, workers killed under load, resources over many hand-overs, and the
//! fetchers' credentials kept from the master's children.

mod util;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};
use util::{Options, Service};

const WATCH: &str = "fetcher = \"file\"\n[upgrade]\ninterval = \"500ms\"\nprobation = \"2s\"\ncheck_timeout = \"3s\"\n";

#[test]
fn with_a_public_key_only_correctly_signed_binaries_are_installed() {
    let (public, secret) = util::keypair();
    let (other_public, other_secret) = util::keypair();
    let config = format!("{WATCH}public_keys = [\"{}\"]\n", public.to_base64());
    let service = Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let signature_path = service.bin.with_file_name("testbed.next.minisig");
    let candidate = util::with_trailer(&service.bin, "signed-release");

    service.offer(&candidate, "no signature is published for it yet");
    service.assert_untouched(&live, worker, "unsigned");

    std::fs::write(
        &signature_path,
        util::sign(&candidate, &other_public, &other_secret),
    )
    .unwrap();
    service.offer(
        &util::with_trailer(&service.bin, "signed-release-b"),
        "bad signature",
    );
    service.assert_untouched(&live, worker, "signed by another key");

    // The right key, but the signature is for other bytes (a tampered binary).
    std::fs::write(
        &signature_path,
        util::sign(b"something else", &public, &secret),
    )
    .unwrap();
    service.offer(
        &util::with_trailer(&service.bin, "signed-release-c"),
        "bad signature",
    );
    service.assert_untouched(&live, worker, "signature over other bytes");

    std::fs::write(&signature_path, "not a signature").unwrap();
    service.offer(
        &util::with_trailer(&service.bin, "signed-release-d"),
        "signature cannot be read",
    );
    service.assert_untouched(&live, worker, "garbage signature");

    let good = util::with_trailer(&service.bin, "signed-release-e");
    std::fs::write(&signature_path, util::sign(&good, &public, &secret)).unwrap();
    util::drop_file(&service.next_path(), &good);
    service.wait_for_sha(&util::sha256_hex(&good));
}

#[test]
fn an_older_version_is_refused_unless_downgrades_are_allowed() {
    let service = Service::serving(Options {
        example: "testbed",
        config: WATCH,
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    service.offer(
        &util::with_trailer(&service.bin, "version:0.0.9"),
        "version 0.0.9 is older than 0.1.0",
    );
    service.assert_untouched(&live, worker, "downgrade");
    let newer = util::with_trailer(&service.bin, "version:0.2.0");
    util::drop_file(&service.next_path(), &newer);
    service.wait_for_sha(&util::sha256_hex(&newer));
    // Now 0.2.0 runs: 0.1.5 is a downgrade too.
    service.offer(
        &util::with_trailer(&service.bin, "version:0.1.5"),
        "version 0.1.5 is older than 0.2.0",
    );

    let allowed = format!("{WATCH}allow_downgrade = true\n");
    let permissive = Service::serving(Options {
        example: "testbed",
        config: &allowed,
        ..Default::default()
    });
    let older = util::with_trailer(&permissive.bin, "version:0.0.9");
    util::drop_file(&permissive.next_path(), &older);
    permissive.wait_for_sha(&util::sha256_hex(&older));
}

#[test]
fn a_full_disk_during_the_download_leaves_no_partial_file_and_the_old_worker_serving() {
    // Writes past 48 MiB fail with EFBIG, as they would with ENOSPC on a full disk; the
    // candidate (a debug build) is larger than that.
    let service = Service::serving(Options {
        example: "testbed",
        config: WATCH,
        file_size_limit: Some(48 * 1024 * 1024),
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    assert!(
        live.len() > 48 * 1024 * 1024,
        "the candidate must exceed the limit for this test to mean anything"
    );
    let worker = service.worker_pid();
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);
    service.offer(
        &util::with_trailer(&service.bin, "too-big"),
        "File too large",
    );
    // A full disk is transient: the updater would retry with back-off. Take the candidate
    // away, let any attempt under way finish, then look for leftovers.
    std::fs::remove_file(service.next_path()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    service.assert_untouched(&live, worker, "disk full");
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert!(service.log().contains("still serving"), "{}", service.log());
}

#[test]
fn the_master_killed_during_the_veto_hook_restarts_on_the_untouched_binary() {
    // The hook is given the candidate's path as its last argument, which `sh -c` takes as $0.
    let config = WATCH.replace(
        "check_timeout = \"3s\"\n",
        "pre_upgrade = [\"sh\", \"-c\", \"exec sleep 30\"]\ncheck_timeout = \"60s\"\n",
    );
    master_killed_while_a_helper_runs(
        &config,
        |service| util::with_trailer(&service.bin, "release-hook"),
        "asking the pre_upgrade hook",
    );
}

#[test]
fn the_master_killed_during_the_sanity_run_restarts_on_the_untouched_binary() {
    // A candidate that hangs in its sanity run, so the master is sure to be killed during it.
    let config = WATCH.replace("check_timeout = \"3s\"", "check_timeout = \"60s\"");
    master_killed_while_a_helper_runs(
        &config,
        |_| b"#!/bin/sh\nexec sleep 30\n".to_vec(),
        "downloaded candidate",
    );
}

/// Offers `candidate` to the testbed under `config` and, once the log says `started`, kills the
/// master while its helper (a `sleep`) runs. Nothing may have been swapped, and a restarted
/// master cleans up the download.
fn master_killed_while_a_helper_runs(
    config: &str,
    candidate: impl FnOnce(&Service) -> Vec<u8>,
    started: &str,
) {
    let mut service = Service::serving(Options {
        example: "testbed",
        config,
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    util::drop_file(&service.next_path(), &candidate(&service));
    service.wait_log(started, Duration::from_secs(20));
    kill_the_master_while_its_helper_runs(&mut service, "sleep");
    std::fs::remove_file(service.next_path()).unwrap();
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        live,
        "swapped before the helper said yes"
    );
    service.spawn_master();
    service.wait_serving();
    assert!(
        service.temporary_files().is_empty(),
        "{:?}",
        service.temporary_files()
    );
}

/// SIGKILLs the master alone while a helper it started (`program`: the pre_upgrade hook, a
/// candidate's sanity run) is running; the helper must die with it rather than live on as an
/// orphan. Then stops whatever else the master had started.
fn kill_the_master_while_its_helper_runs(service: &mut Service, program: &str) {
    let master = service.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    let helper = loop {
        let found = util::children_of(master).into_iter().find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == program)
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the master never ran {program}:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let others = util::descendants(master);
    // SAFETY: kill(2) on the master this test started.
    unsafe { libc::kill(master as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while util::alive(helper) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let orphaned = util::alive(helper);
    for pid in others {
        // SAFETY: kill(2) on processes the master started for this test.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    service.kill_all();
    assert!(!orphaned, "{program} (pid {helper}) outlived the master");
}

#[test]
fn the_master_killed_during_probation_restarts_on_the_new_binary() {
    let mut service = Service::serving(Options {
        example: "testbed",
        config: WATCH,
        ..Default::default()
    });
    let new = util::with_trailer(&service.bin, "release-probation");
    util::drop_file(&service.next_path(), &new);
    service.wait_for_sha(&util::sha256_hex(&new));
    service.kill_all();
    assert_eq!(std::fs::read(&service.bin).unwrap(), new);
    service.spawn_master();
    service.wait_for_sha(&util::sha256_hex(&new));
    assert!(service.temporary_files().is_empty());
}

#[test]
fn workers_killed_repeatedly_under_load_are_replaced_every_time() {
    let service = Service::serving(Options::default());
    let master = service.pid();
    let load = Load::start(service.addr(), 32, Protocol::Http1, "/");
    load.wait_progress(200);
    for round in 0..5 {
        let victim = service.worker_pid();
        // SAFETY: kill(2) on a worker of our own master.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        service.wait_new_worker(victim);
        load.wait_progress(100);
        assert!(util::alive(master), "round {round}: the master died");
    }
    let stats = load.finish();
    // Each kill may fail at most the requests in flight on that worker.
    assert!(
        stats.failed <= 5 * 32,
        "{} failed: {:?}",
        stats.failed,
        stats.errors
    );
    eprintln!(
        "5 worker SIGKILLs under 32 connections: {} of {} requests failed",
        stats.failed,
        stats.ok + stats.failed
    );
    assert_eq!(service.log_count("worker crashed; sockets stay open"), 5);
}

/// Waits until old workers, which may still be draining, are reaped, and the master has handled
/// their exits.
fn settle(master: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while util::children_of(master).len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn the_master_keeps_no_descriptor_or_memory_per_handover() {
    let service = Service::serving(Options::default());
    let master = service.pid();
    // Warm up: the first hand-overs allocate what the master keeps for its life.
    for _ in 0..5 {
        service.restart();
    }
    // Measure the baseline with one worker only: a warm-up worker still draining holds
    // descriptors in the master that are released when it is reaped.
    settle(master);
    let fds_before = util::open_fds(master);
    let rss_before = util::resident_kib(master);
    for _ in 0..100 {
        service.restart();
    }
    settle(master);
    // A worker reaped a moment ago may still hold a descriptor in the master (its control
    // channel closes when its exit is handled): give that a moment on a loaded machine.
    let mut fds_after = util::open_fds(master);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_after != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = util::open_fds(master);
    }
    let rss_after = util::resident_kib(master);
    eprintln!("master after 100 hand-overs: fds {fds_before} -> {fds_after}, RSS {rss_before} KiB -> {rss_after} KiB");
    assert_eq!(fds_after, fds_before, "descriptors leaked");
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew by {} KiB over 100 hand-overs",
        rss_after - rss_before
    );
}

/// The credentials the fetchers read, set in the master's environment.
const SECRETS: [(&str, &str); 5] = [
    ("GITHUB_TOKEN", "secret-github"),
    ("HANDOVER_HTTP_TOKEN", "secret-http"),
    ("AWS_ACCESS_KEY_ID", "secret-key-id"),
    ("AWS_SECRET_ACCESS_KEY", "secret-access-key"),
    ("AWS_SESSION_TOKEN", "secret-session"),
];

/// The master's extra environment: [`SECRETS`], `AWS_REGION` (which the tests' configs pass on
/// with `pass_env`) and a harmless variable, plus `extra`.
fn with_secrets(extra: &[(&str, &Path)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = SECRETS
        .iter()
        .chain(&[("AWS_REGION", "eu-test-1"), ("HELLO_PLAIN", "kept")])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in extra {
        env.push((k.to_string(), v.display().to_string()));
    }
    env
}

/// Waits for the `NAME=VALUE` lines a child wrote to `path`, and reads them.
fn read_env(service: &Service, path: &Path) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never written:\n{}",
            path.display(),
            service.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_no_secrets(env: &HashMap<String, String>, who: &str) {
    for (name, _) in SECRETS {
        assert!(!env.contains_key(name), "{who} received {name}");
    }
    assert!(
        !env.values().any(|v| v.starts_with("secret-")),
        "{who} received a secret under another name: {env:?}"
    );
    assert_eq!(
        env.get("AWS_REGION").map(String::as_str),
        Some("eu-test-1"),
        "{who}: pass_env lets AWS_REGION through"
    );
    assert_eq!(
        env.get("HELLO_PLAIN").map(String::as_str),
        Some("kept"),
        "{who}"
    );
}

// regression: GITHUB_TOKEN, HANDOVER_HTTP_TOKEN and the AWS keys reached every worker (issue 13).
#[test]
fn workers_do_not_receive_the_fetchers_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("worker.env");
    let service = Service::serving(Options {
        example: "testbed",
        config: "pass_env = [\"AWS_REGION\"]\n",
        env: with_secrets(&[("HELLO_ENV_DUMP", &dump)]),
        ..Default::default()
    });
    assert_no_secrets(&read_env(&service, &dump), "the first worker");
    std::fs::remove_file(&dump).unwrap();
    service.restart();
    assert_no_secrets(&read_env(&service, &dump), "the worker after a hand-over");
}

// regression: the same secrets reached the sanity run of every candidate and the pre_upgrade
// hook (issue 13).
#[test]
fn sanity_runs_and_the_pre_upgrade_hook_do_not_receive_the_fetchers_credentials() {
    // Both write their environment beside the live binary; the hook then vetoes, so nothing is
    // installed. The hook is given the candidate's path last, which `sh -c` takes as $0.
    let hook = r#"pre_upgrade = ["sh", "-c", 'd=$(dirname "$0"); env > "$d/hook.partial" && mv "$d/hook.partial" "$d/hook.env"; exit 1']"#;
    let config = format!(
        "pass_env = [\"AWS_REGION\"]\n{}",
        WATCH.replace(
            "check_timeout = \"3s\"\n",
            &format!("check_timeout = \"10s\"\nsanity = \"exit-zero\"\n{hook}\n"),
        )
    );
    let service = Service::serving(Options {
        example: "testbed",
        config: &config,
        env: with_secrets(&[]),
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let candidate = b"#!/bin/sh\nd=$(dirname \"$0\")\nenv > \"$d/sanity.partial\" && mv \"$d/sanity.partial\" \"$d/sanity.env\"\n";
    service.offer(candidate, "vetoed by pre_upgrade hook");
    std::fs::remove_file(service.next_path()).unwrap();
    assert_no_secrets(
        &read_env(&service, &service.path("sanity.env")),
        "the sanity run",
    );
    assert_no_secrets(
        &read_env(&service, &service.path("hook.env")),
        "the pre_upgrade hook",
    );
    service.assert_untouched(&live, worker, "vetoed");
}
