//! Hostile inputs and faults: signatures, downgrades, a full disk, the master killed at each
//! step of an upgrade, workers killed under load, and resources over many hand-overs.

mod util;

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

#[test]
fn the_master_keeps_no_descriptor_or_memory_per_handover() {
    let service = Service::serving(Options::default());
    let master = service.pid();
    // Warm up: the first hand-overs allocate what the master keeps for its life.
    for _ in 0..5 {
        service.restart();
    }
    let fds_before = open_fds(master);
    let rss_before = resident_kib(master);
    for _ in 0..100 {
        service.restart();
    }
    // Old workers may still be draining; wait for them to be reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while util::children_of(master).len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A worker reaped a moment ago may still hold a descriptor in the master (its control
    // channel closes when its exit is handled): give that a moment on a loaded machine.
    let mut fds_after = open_fds(master);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_after != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = open_fds(master);
    }
    let rss_after = resident_kib(master);
    eprintln!("master after 100 hand-overs: fds {fds_before} -> {fds_after}, RSS {rss_before} KiB -> {rss_after} KiB");
    assert_eq!(fds_after, fds_before, "descriptors leaked");
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew by {} KiB over 100 hand-overs",
        rss_after - rss_before
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}
