//! What `handover status` says on a master's control socket, for the rollout tests.

#![allow(unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fleet::HANDOVER;

/// Whether `table` has a line that reads `words` (whatever the spacing).
pub fn has_line(table: &str, words: &[&str]) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().eq(words.iter().copied()))
}

pub fn control_status(socket: &Path) -> String {
    let out = Command::new(HANDOVER)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `handover status` on `socket` contains `needle`.
pub fn wait_status(socket: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = control_status(socket);
        if shown.contains(needle) || Instant::now() > deadline {
            let check = Command::new(HANDOVER)
                .args(["upgrade", "--socket"])
                .arg(socket)
                .output()
                .unwrap();
            let check = String::from_utf8_lossy(&check.stdout).into_owned()
                + &String::from_utf8_lossy(&check.stderr);
            assert!(
                shown.contains(needle),
                "no {needle:?} in:\n{shown}\n(handover upgrade: {check})"
            );
            return shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
