//! Unattended upgrades whatever the order in which a release is published, and whatever
//! happens to the master: a publication that is not complete yet is waited for (at the normal
//! interval, logged once), and what the pipeline learnt (quarantine, probation) survives a
//! SIGKILL of the master.

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::load::{Load, Protocol};
use util::{Options, Service};

const INTERVAL: Duration = Duration::from_millis(500);

/// The file fetcher on `<bin>.next`, polling every 500 ms.
fn watch(extra: &str) -> String {
    format!(
        "fetcher = \"file\"\n[upgrade]\ninterval = \"500ms\"\njitter = 0.0\ncheck_timeout = \"3s\"\n{extra}\n[file]\nsettle = \"100ms\"\n"
    )
}

fn testbed(config: &str) -> Service {
    Service::serving(Options {
        example: "testbed",
        config,
        ..Default::default()
    })
}

fn sidecar(service: &Service, suffix: &str) -> PathBuf {
    let next = service.next_path();
    next.with_file_name(format!(
        "{}{suffix}",
        next.file_name().unwrap().to_string_lossy()
    ))
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("incoming-sidecar");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waiting for a publication to complete is no failure: nothing was retried with back-off
/// (the pipeline logs `retry_in` for each back-off it takes).
fn assert_no_back_off(service: &Service) {
    let log = service.log();
    assert!(!log.contains("retry_in"), "backed off:\n{log}");
}

/// Waits until the served sha256 is `sha` and returns how long that took.
fn time_to_serve(service: &Service, sha: &str) -> Duration {
    let started = Instant::now();
    service.wait_for_sha(sha);
    started.elapsed()
}

// regression: a signed binary whose .minisig arrived after it was refused as unsigned and
// never installed.
#[test]
fn a_signature_published_after_the_binary_is_waited_for_then_installed() {
    let (public, secret) = util::keypair();
    let service = testbed(&watch(&format!(
        "public_keys = [\"{}\"]",
        public.to_base64()
    )));
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);

    let release = util::with_trailer(&service.bin, "signed-late");
    util::drop_file(&service.next_path(), &release);
    service.wait_log("waiting for the .minisig", Duration::from_secs(10));
    // Several polls pass while the signature is missing: the binary stays untouched and the
    // wait is logged once, not once a poll.
    std::thread::sleep(INTERVAL * 4);
    service.assert_untouched(&live, worker, "signature not published yet");
    assert_eq!(
        service.log_count("waiting for the .minisig"),
        1,
        "logged once:\n{}",
        service.log()
    );

    write_atomically(
        &sidecar(&service, ".minisig"),
        util::sign(&release, &public, &secret).as_bytes(),
    );
    let took = time_to_serve(&service, &util::sha256_hex(&release));
    eprintln!("signature published → new binary serving: {took:?}");
    assert_no_back_off(&service);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
}

#[test]
fn a_checksum_published_after_the_binary_is_waited_for_then_installed() {
    let service = testbed(&watch("checksum_required = true"));
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let release = util::with_trailer(&service.bin, "checksum-late");
    let sha = util::sha256_hex(&release);
    util::drop_file(&service.next_path(), &release);
    service.wait_log("waiting for the checksum", Duration::from_secs(10));
    std::thread::sleep(INTERVAL * 3);
    service.assert_untouched(&live, worker, "checksum not published yet");

    write_atomically(
        &sidecar(&service, ".sha256"),
        format!("{sha}  testbed.next\n").as_bytes(),
    );
    let took = time_to_serve(&service, &sha);
    eprintln!("checksum published → new binary serving: {took:?}");
    assert_no_back_off(&service);
}

// regression: a checksum that did not match quarantined the bytes until the master restarted,
// so a corrected checksum for the very same bytes was never installed.
#[test]
fn a_wrong_checksum_corrected_for_the_same_bytes_is_installed() {
    let service = testbed(&watch(""));
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let release = util::with_trailer(&service.bin, "checksum-fixed");
    let sha = util::sha256_hex(&release);
    let wrong = util::sha256_hex(b"what the publisher hashed by mistake");
    write_atomically(
        &sidecar(&service, ".sha256"),
        format!("{wrong}  testbed.next\n").as_bytes(),
    );
    util::drop_file(&service.next_path(), &release);
    service.wait_log("does not match the published", Duration::from_secs(10));
    service.assert_untouched(&live, worker, "checksum mismatch");
    assert!(
        !service.log().contains("quarantined"),
        "a checksum mismatch is not a reason to quarantine:\n{}",
        service.log()
    );

    write_atomically(
        &sidecar(&service, ".sha256"),
        format!("{sha}  testbed.next\n").as_bytes(),
    );
    let took = time_to_serve(&service, &sha);
    eprintln!("checksum corrected → new binary serving: {took:?}");
    assert_no_back_off(&service);
}

/// A service upgraded to a binary that crashes `crash_ms` after it starts serving, once that
/// binary serves; returns it with the bad binary's bytes.
fn upgraded_to_crashing(probation: &str, crash_ms: u64, control: &Path) -> (Service, Vec<u8>) {
    let config = watch(&format!("probation = \"{probation}\""));
    let config = format!("control_socket = \"{}\"\n{config}", control.display());
    let service = testbed(&config);
    let bad = util::with_trailer(&service.bin, &format!("crash-after-ready:{crash_ms}"));
    util::drop_file(&service.next_path(), &bad);
    service.wait_for_sha(&util::sha256_hex(&bad));
    (service, bad)
}

#[test]
fn a_rolled_back_release_is_not_installed_again_after_the_master_is_killed() {
    let control = tempfile::tempdir().unwrap();
    let socket = control.path().join("control.sock");
    let (mut service, bad) = upgraded_to_crashing("20s", 1500, &socket);
    let live_sha =
        util::sha256_hex(&std::fs::read(service.bin.with_file_name("testbed.previous")).unwrap());
    service.wait_log("upgrade rolled back", Duration::from_secs(15));
    service.wait_for_sha(&live_sha);
    let state = service.bin.with_file_name("testbed.handover-state");
    let text = std::fs::read_to_string(&state).expect("state file beside the binary");
    assert!(text.contains(&util::sha256_hex(&bad)), "{text}");

    // SIGKILL the master and its workers; the crashing release is still at .next.
    service.kill_all();
    assert!(service.next_path().exists());
    service.spawn_master();
    service.wait_for_sha(&live_sha);
    let load = Load::start(service.addr(), 16, Protocol::Http1, "/");
    load.wait_progress(200);
    service.wait_log("is quarantined", Duration::from_secs(10));
    std::thread::sleep(INTERVAL * 4);
    load.wait_progress(200);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.served_sha(), live_sha[..12], "not re-installed");
    assert_eq!(
        util::sha256_hex(&std::fs::read(&service.bin).unwrap()),
        live_sha
    );

    // `handover status` lists it; `handover forget` releases it.
    let status = handover::control_request(&socket, "status").unwrap();
    assert!(status.contains("quarantined: 1"), "{status}");
    assert!(status.contains(&util::sha256_hex(&bad)), "{status}");
    let released = handover::control_request(
        &socket,
        &format!("forget {}", &util::sha256_hex(&bad)[..16]),
    )
    .unwrap();
    assert!(released.contains(&util::sha256_hex(&bad)), "{released}");
    let status = handover::control_request(&socket, "status").unwrap();
    assert!(status.contains("quarantined: 0"), "{status}");
    let unknown = handover::control_request(&socket, "forget 0123456789abcdef").unwrap_err();
    assert!(
        unknown.to_string().contains("no quarantined sha256"),
        "{unknown}"
    );
    // Released, the same bytes are tried again (and, crashing again, rolled back again).
    let rollbacks = service.log_count("upgrade rolled back");
    util::drop_file(&service.next_path(), &bad);
    service.wait_for_sha(&util::sha256_hex(&bad));
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.log_count("upgrade rolled back") == rollbacks {
        assert!(Instant::now() < deadline, "{}", service.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_master_killed_mid_probation_resumes_it_and_rolls_back_a_crash() {
    let control = tempfile::tempdir().unwrap();
    let (mut service, bad) =
        upgraded_to_crashing("30s", 4000, &control.path().join("control.sock"));
    let previous = std::fs::read(service.bin.with_file_name("testbed.previous")).unwrap();
    // The new worker serves; kill everything before it crashes.
    service.kill_all();
    assert_eq!(
        std::fs::read(&service.bin).unwrap(),
        bad,
        "the probation's binary is live"
    );
    service.spawn_master();
    service.wait_log("resuming the probation", Duration::from_secs(10));
    // The first worker of the restarted master runs the bad binary and crashes 4 s after it
    // started serving: still in probation, so the previous binary comes back.
    service.wait_log("upgrade rolled back", Duration::from_secs(20));
    service.wait_for_sha(&util::sha256_hex(&previous));
    assert_eq!(std::fs::read(&service.bin).unwrap(), previous);
}

// regression: a restart signal during probation moved probation to nowhere, so a crash of the
// upgraded binary after it was never rolled back.
#[test]
fn a_restart_during_probation_keeps_probation_on_the_new_binary() {
    let control = tempfile::tempdir().unwrap();
    let (service, bad) = upgraded_to_crashing("30s", 3000, &control.path().join("control.sock"));
    let previous = std::fs::read(service.bin.with_file_name("testbed.previous")).unwrap();
    let first = service.worker_pid();
    service.signal(libc::SIGUSR2);
    let second = service.wait_new_worker(first);
    assert_eq!(util::field(&second, "sha256"), util::sha256_hex(&bad)[..12]);
    service.wait_log("upgrade rolled back", Duration::from_secs(20));
    service.wait_for_sha(&util::sha256_hex(&previous));
    // The whole story of that upgrade is in one `upgrade` span with its hash.
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.contains("upgrade rolled back"))
        .unwrap();
    assert!(
        line.contains("upgrade{") && line.contains(&util::sha256_hex(&bad)[..12]),
        "{line}"
    );
}

#[test]
fn a_corrupt_state_file_is_reported_and_ignored() {
    let control = tempfile::tempdir().unwrap();
    let socket = control.path().join("control.sock");
    let config = format!("control_socket = \"{}\"\n{}", socket.display(), watch(""));
    let mut service = Service::start(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    });
    service.wait_serving();
    service.kill_all();
    let state = service.bin.with_file_name("testbed.handover-state");
    std::fs::write(&state, b"{\"format\": 1, \"quarantine\": [").unwrap();
    service.spawn_master();
    service.wait_serving();
    service.wait_log(
        "upgrade state file is not valid JSON",
        Duration::from_secs(10),
    );
    // It still upgrades.
    let release = util::with_trailer(&service.bin, "after-corrupt-state");
    util::drop_file(&service.next_path(), &release);
    service.wait_for_sha(&util::sha256_hex(&release));
}

#[test]
fn the_highest_version_installed_stays_the_downgrade_floor_after_a_rollback_and_a_restart() {
    let control = tempfile::tempdir().unwrap();
    let socket = control.path().join("control.sock");
    let config = format!(
        "control_socket = \"{}\"\n{}",
        socket.display(),
        watch("probation = \"1s\"")
    );
    let mut service = testbed(&config);
    let v2 = util::with_trailer(&service.bin, "version:0.2.0");
    util::drop_file(&service.next_path(), &v2);
    service.wait_for_sha(&util::sha256_hex(&v2));
    service.wait_log("upgrade passed probation", Duration::from_secs(10));
    // Back to 0.1.0 by hand, then a master restart: 0.2.0 is still the floor.
    handover::control_request(&socket, "rollback").unwrap();
    let original = std::fs::read(service.bin.with_file_name("testbed.previous")).unwrap();
    service.wait_for_sha(&util::sha256_hex(&original));
    service.kill_all();
    service.spawn_master();
    service.wait_serving();
    let status = handover::control_request(&socket, "status").unwrap();
    assert!(status.contains("highest installed: 0.2.0"), "{status}");
    service.offer(
        &util::with_trailer(&service.bin, "version:0.1.5"),
        "version 0.1.5 is older than 0.2.0",
    );
}
