//! The upgrade pipeline with the file fetcher: drop a binary at `<bin>.next`, the service
//! upgrades itself; every bad input is refused without disturbing the running worker.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};
use util::{Options, Service};

/// The file fetcher on `<bin>.next`, polling fast; short probation so rollbacks show quickly.
const WATCH: &str = "fetcher = \"file\"\n[upgrade]\ninterval = \"500ms\"\nprobation = \"4s\"\ncheck_timeout = \"3s\"\n[file]\nsettle = \"100ms\"\n";

fn testbed_with_watch() -> Service {
    Service::serving(Options {
        example: "testbed",
        config: WATCH,
        ..Default::default()
    })
}

#[test]
fn dropping_a_new_binary_under_load_upgrades_with_zero_failed_requests() {
    let service = testbed_with_watch();
    let master = service.pid();
    let original = std::fs::read(&service.bin).unwrap();
    let load = Load::start(service.addr(), 64, Protocol::Http1, "/");
    load.wait_progress(500);
    let new = util::with_trailer(&service.bin, "release-2");
    let new_sha = util::sha256_hex(&new);
    util::drop_file(&service.next_path(), &new);
    service.wait_for_sha(&new_sha);
    load.wait_progress(500);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.pid(), master, "master PID unchanged");
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        new,
        "new binary is live"
    );
    let previous = service.bin.with_file_name("testbed.previous");
    assert_eq!(
        std::fs::read(previous).unwrap(),
        original,
        "previous binary kept"
    );
    service.wait_log("upgrade passed probation", Duration::from_secs(10));
}

#[test]
fn bad_candidates_are_refused_and_the_old_worker_keeps_serving() {
    let service = testbed_with_watch();
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);

    service.offer(
        &live[..live.len() / 2],
        "truncated: the ELF section header table ends at byte",
    );
    service.assert_untouched(&live, worker, "truncated binary");

    let random: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    service.offer(&random, "not an executable for this machine");
    service.assert_untouched(&live, worker, "random bytes");

    // Built for another architecture (the ELF header's e_machine): the kernel refuses it.
    let mut foreign = live.clone();
    let machine: u16 = if cfg!(target_arch = "aarch64") {
        0x3e
    } else {
        0xb7
    };
    foreign[18..20].copy_from_slice(&machine.to_le_bytes());
    service.offer(&foreign, "not an executable for this machine");
    service.assert_untouched(&live, worker, "another architecture");

    service.offer(
        b"#!/bin/sh\necho garbage\n",
        "did not answer like a handover program",
    );
    service.assert_untouched(&live, worker, "script printing garbage");

    service.offer(b"#!/bin/sh\nexit 7\n", "sanity run failed (exit code 7)");
    service.assert_untouched(&live, worker, "script failing");

    service.offer(
        b"#!/bin/sh\nsleep 30\n",
        "sanity run did not answer within 3s",
    );
    service.assert_untouched(&live, worker, "script hanging in the sanity run");

    service.offer(&live, "identical to the running binary; nothing to do");
    service.assert_untouched(&live, worker, "same hash as running");

    let good = util::with_trailer(&service.bin, "release-3");
    std::fs::write(
        service.next_path().with_file_name("testbed.next.sha256"),
        format!("{}  testbed.next\n", "ab".repeat(32)),
    )
    .unwrap();
    service.offer(&good, "does not match the published abababababab");
    service.assert_untouched(&live, worker, "published sha256 mismatch");
    // The publication changes: without the checksum file (a local file needs none) the same
    // binary is looked at again and installed.
    std::fs::remove_file(service.next_path().with_file_name("testbed.next.sha256")).unwrap();
    service.wait_for_sha(&util::sha256_hex(&good));
    let live = std::fs::read(&service.bin).unwrap();
    assert_eq!(live, good);
    let worker = service.worker_pid();
    service.wait_log("upgrade passed probation", Duration::from_secs(15));

    // Crashes at start and hangs before ready pass the sanity run (it comes first) but fail
    // the hand-over: rolled back, the old worker untouched.
    service.offer(
        &util::with_trailer(&service.bin, "exit-at-start"),
        "upgrade rolled back",
    );
    service.assert_untouched(&live, worker, "crash at start");
    service.offer(
        &util::with_trailer(&service.bin, "never-ready"),
        "upgrade rolled back",
    );
    service.assert_untouched(&live, worker, "never ready");

    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    let log = service.log();
    assert!(
        log.contains("still serving version 0.1.0"),
        "errors say what was kept:\n{log}"
    );
    assert!(
        log.contains("exited before it was ready (exit code 3)"),
        "{log}"
    );
    assert!(log.contains("not ready within 5s"), "{log}");
}

#[test]
fn a_crash_during_probation_rolls_back_and_quarantines_the_hash() {
    let service = testbed_with_watch();
    let live = std::fs::read(&service.bin).unwrap();
    let live_sha = util::sha256_hex(&live);
    let bad = util::with_trailer(&service.bin, "crash-after-ready:1500");
    let bad_sha = util::sha256_hex(&bad);
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);
    util::drop_file(&service.next_path(), &bad);
    service.wait_for_sha(&bad_sha);
    service.wait_log(
        "upgrade rolled back; previous binary restored",
        Duration::from_secs(15),
    );
    service.wait_for_sha(&live_sha);
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        live,
        "previous binary restored on disk"
    );
    load.wait_progress(200);
    let stats = load.finish();
    // Only requests in flight on the crashing worker can fail.
    assert!(
        stats.failed <= 16,
        "{} failed: {:?}",
        stats.failed,
        stats.errors
    );
    eprintln!(
        "crash 1.5 s after ready under 16 connections: {} of {} requests failed",
        stats.failed, stats.ok
    );

    // The same bytes offered again (a new file with the same content) are not tried again.
    service.offer(&bad, "quarantined");
    assert_eq!(service.served_sha(), live_sha[..12]);
}

#[test]
fn a_copy_in_progress_or_removed_mid_copy_is_never_installed() {
    let service = testbed_with_watch();
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let next = service.next_path();
    let new = util::with_trailer(&service.bin, "release-4");

    // A slow copy that is abandoned and removed half-way (removed while still open: closing a
    // file after writing says it is whole, which an abandoned copy is not).
    let abandoned = slow_write(&next, &new[..new.len() / 2], 10);
    std::fs::remove_file(&next).unwrap();
    drop(abandoned);
    std::thread::sleep(Duration::from_millis(1500));
    service.assert_untouched(&live, worker, "file removed mid-copy");

    // A slow copy that completes: taken once, whole.
    drop(slow_write(&next, &new, 10));
    service.wait_for_sha(&util::sha256_hex(&new));
    let log = service.log();
    assert!(
        !log.contains("rejected"),
        "a partial file was offered:\n{log}"
    );
}

/// Writes `bytes` to `path` in `chunks` pieces, 60 ms apart (longer than the settle time is
/// not needed: every write changes size and mtime); returns the file, still open.
fn slow_write(path: &Path, bytes: &[u8], chunks: usize) -> std::fs::File {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::File::create(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(chunks)) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    file
}

#[test]
fn a_master_killed_mid_upgrade_restarts_on_an_intact_binary_and_cleans_up() {
    // Room for a large candidate, whatever size the build's binary is.
    let config = WATCH.replace("[upgrade]\n", "[upgrade]\nmax_size = \"4GiB\"\n");
    let mut service = Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    });
    let live = std::fs::read(&service.bin).unwrap();
    // A large candidate so the download is still under way when the master dies.
    let mut big = util::with_trailer(&service.bin, "release-5");
    big.resize(big.len() + 400 * 1024 * 1024, 0);
    let next = service.next_path();
    util::drop_file(&next, &big);
    let deadline = Instant::now() + Duration::from_secs(20);
    let temp = loop {
        let found = std::fs::read_dir(service.dir.path())
            .unwrap()
            .flatten()
            .find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".testbed.handover-") && !name.contains(".handover-gen-")
            });
        if let Some(entry) = found {
            break entry.path();
        }
        assert!(
            Instant::now() < deadline,
            "the download never started:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    service.kill_all();
    std::fs::remove_file(&next).unwrap();
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        live,
        "live binary intact after SIGKILL"
    );

    service.spawn_master();
    service.wait_serving();
    assert!(
        !temp.exists(),
        "leftover temporary file {} not cleaned at start",
        temp.display()
    );
    assert!(service.log().contains("removing leftover temporary file"));
}

fn handover(command: &str, socket: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg(command)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

#[test]
fn handover_upgrade_checks_now_and_handover_rollback_puts_the_previous_binary_back() {
    // Polling once an hour and no inotify: only `handover upgrade` can make it look now.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let config = format!(
        "control_socket = \"{}\"\nfetcher = \"file\"\n[upgrade]\ninterval = \"1h\"\nprobation = \"1s\"\n[file]\npoll_only = true\nsettle = \"50ms\"\n",
        socket.display()
    );
    let service = Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    });
    let original = std::fs::read(&service.bin).unwrap();
    // The first poll at start has passed: nothing new then.
    service.wait_log("watching for upgrades", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let new = util::with_trailer(&service.bin, "checked-now");
    util::drop_file(&service.next_path(), &new);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        original,
        "upgraded before being asked"
    );

    let output = handover("upgrade", &socket);
    assert!(output.status.success(), "{output:?}");
    service.wait_for_sha(&util::sha256_hex(&new));
    service.wait_log("upgrade passed probation", Duration::from_secs(10));
    let status = String::from_utf8_lossy(&handover("status", &socket).stdout).into_owned();
    assert!(
        status.contains("last upgrade:") && status.contains("installed"),
        "{status}"
    );

    let output = handover("rollback", &socket);
    assert!(output.status.success(), "{output:?}");
    service.wait_for_sha(&util::sha256_hex(&original));
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        original,
        "previous binary restored on disk"
    );
}

#[test]
fn a_custom_fetcher_upgrades_to_the_newest_release_it_finds() {
    // examples/custom_fetcher.rs: releases dropped into `releases/` beside the binary as
    // `custom_fetcher-<version>`; it runs as version 0.1.0.
    let service = Service::serving(Options {
        example: "custom_fetcher",
        config: "[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\n",
        ..Default::default()
    });
    let master = service.pid();
    let releases = service.dir.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    let load = Load::start(service.addr(), 32, Protocol::Http1, "/");
    load.wait_progress(200);
    // Not newer than what runs: never offered. Two newer ones: the newest wins.
    let older = util::with_trailer(&service.bin, "release-0.0.9");
    let newer = util::with_trailer(&service.bin, "release-0.2.0");
    let newest = util::with_trailer(&service.bin, "release-0.3.0");
    util::drop_file(&releases.join("custom_fetcher-0.0.9"), &older);
    util::drop_file(&releases.join("custom_fetcher-0.2.0"), &newer);
    util::drop_file(&releases.join("custom_fetcher-0.3.0"), &newest);
    service.wait_for_sha(&util::sha256_hex(&newest));
    service.wait_log("upgrade passed probation", Duration::from_secs(10));
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.pid(), master, "master PID unchanged");
    assert_eq!(std::fs::read(&service.bin).unwrap(), newest);
    let log = service.log();
    assert!(log.contains("fetcher=\"release-dir\""), "{log}");
    assert!(
        !log.contains("custom_fetcher-0.0.9"),
        "an older release was offered:\n{log}"
    );
}

#[test]
fn a_newer_candidate_during_probation_supersedes_it_and_a_rollback_goes_to_the_proven_binary() {
    // A probation of ten minutes: only a candidate that supersedes it can be installed in time.
    let service = Service::serving(Options {
        example: "testbed",
        config: "fetcher = \"file\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"10m\"\ncheck_timeout = \"3s\"\n[file]\nsettle = \"100ms\"\n",
        ..Default::default()
    });
    let pristine = service.dir.path().join("pristine");
    std::fs::copy(&service.bin, &pristine).unwrap();
    let proven = std::fs::read(&service.bin).unwrap();
    let previous = service.bin.with_file_name("testbed.previous");
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);

    let second = util::with_trailer(&pristine, "release-2");
    util::drop_file(&service.next_path(), &second);
    service.wait_for_sha(&util::sha256_hex(&second));
    service.wait_log("probation runs", Duration::from_secs(10));

    // A fix published during the probation is installed at once, not in ten minutes.
    let third = util::with_trailer(&pristine, "release-3");
    let third_sha = util::sha256_hex(&third);
    util::drop_file(&service.next_path(), &third);
    service.wait_for_sha(&third_sha);
    let log = service.wait_log("superseded by a newer candidate", Duration::from_secs(5));
    assert!(!log.contains("upgrade passed probation"), "{log}");
    assert_eq!(
        std::fs::read(&previous).unwrap(),
        proven,
        "the rollback point is still the binary that was proven, not the superseded one"
    );
    let state =
        std::fs::read_to_string(service.bin.with_file_name("testbed.handover-state")).unwrap();
    assert!(
        state.contains(&third_sha),
        "probation follows the newest: {state}"
    );
    assert!(
        state.contains(&util::sha256_hex(&proven)),
        "its previous is the proven binary: {state}"
    );

    // A newer one that crashes in its probation goes back to the proven binary.
    let bad = util::with_trailer(&pristine, "crash-after-ready:800");
    util::drop_file(&service.next_path(), &bad);
    service.wait_for_sha(&util::sha256_hex(&bad));
    service.wait_log("upgrade rolled back", Duration::from_secs(15));
    service.wait_for_sha(&util::sha256_hex(&proven));
    assert_eq!(std::fs::read(&service.bin).unwrap(), proven);
    load.wait_progress(200);
    let stats = load.finish();
    // Only requests in flight on the crashing worker can fail.
    assert!(
        stats.failed <= 16,
        "{} failed: {:?}",
        stats.failed,
        stats.errors
    );
    let log = service.log();
    assert!(log.contains("upgrade stages: download "), "{log}");
}
