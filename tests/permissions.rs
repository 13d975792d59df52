//! Who else can write what an upgrade trusts: with no keys and no checksum (the default for a
//! file on this machine), anyone who can write the watched file, or any directory above it,
//! could run code as the service. Such upgrades are refused, naming the path, and installed
//! once the path is private, with no new publication needed.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::{Options, Service};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A service watching `<drops>/shared/inbox/testbed.next`.
fn watching_inbox() -> (Service, tempfile::TempDir, PathBuf, PathBuf) {
    let drops = tempfile::tempdir().unwrap();
    let shared = drops.path().join("shared");
    let inbox = shared.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let watched = inbox.join("testbed.next");
    let config = format!(
        "fetcher = \"file\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\n[file]\npath = \"{}\"\n",
        watched.display()
    );
    let service = Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    });
    (service, drops, shared, watched)
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_watched_file_below_a_directory_anyone_can_write_is_refused_until_that_is_fixed() {
    let (service, _drops, shared, watched) = watching_inbox();
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    chmod(&shared, 0o777);
    let release = util::with_trailer(&service.bin, "via-shared-dir");
    util::drop_file(&watched, &release);
    let line = format!(
        "{} is writable by every user",
        shared.canonicalize().unwrap().display()
    );
    service.wait_log(&line, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    service.assert_untouched(
        &live,
        worker,
        "watched path under a world-writable directory",
    );
    assert_eq!(
        service.log_count("not ready yet, looking again"),
        1,
        "logged once:\n{}",
        service.log()
    );

    // Made private: the same file is taken at the next poll, with nothing published again.
    chmod(&shared, 0o755);
    service.wait_for_sha(&util::sha256_hex(&release));
}

#[test]
fn a_group_writable_directory_counts_only_when_another_user_is_in_the_group() {
    if !root() {
        eprintln!("not root: cannot create the users and groups this test needs");
        return;
    }
    run("groupadd", &["-f", "handover-t-shared"]);
    run("groupadd", &["-f", "handover-t-solo"]);
    if Command::new("id")
        .arg("handover-t-member")
        .output()
        .unwrap()
        .status
        .code()
        != Some(0)
    {
        run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--no-user-group",
                "-G",
                "handover-t-shared",
                "handover-t-member",
            ],
        );
    }
    let (service, _drops, shared, watched) = watching_inbox();
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    run("chgrp", &["handover-t-shared", shared.to_str().unwrap()]);
    chmod(&shared, 0o775);
    let release = util::with_trailer(&service.bin, "via-group-dir");
    util::drop_file(&watched, &release);
    service.wait_log("to which user handover-t-member", Duration::from_secs(20));
    service.assert_untouched(&live, worker, "group with another member");

    // A group nobody else is in: as private as the owner.
    run("chgrp", &["handover-t-solo", shared.to_str().unwrap()]);
    service.wait_for_sha(&util::sha256_hex(&release));
}
