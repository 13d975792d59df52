//! Delta updates: a host that runs the release a patch starts from installs the next one from
//! the patch (`handover rollout patch`), checked by its full SHA-256 and signatures, and
//! downloads the whole release when the patch is unusable.

use std::path::Path;
use std::time::Duration;

use handover::rollout::delta;

use crate::fleet::{Backend, Fleet};
use crate::util;

#[test]
fn a_host_installs_a_staged_release_from_a_delta_patch_and_downloads_it_whole_when_the_patch_is_corrupt(
) {
    let fleet = Fleet::new(Backend::Dir);
    let (service, _socket) = fleet.master("solo");
    let base = std::fs::read(&service.bin).unwrap();

    // The publisher patches from what the host runs to the release, then stages and
    // publishes it: the host takes the patch, not the binary.
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let sha = util::sha256_hex(&good);
    let file = fleet.stage(&good);
    let out = patch(&fleet, &base, &file);
    assert!(
        out.contains(&format!("bytes instead of {}", good.len())),
        "{out}"
    );
    let name = delta::patch_name(&util::sha256_hex(&base), &sha);
    assert!(fleet.path(&name).exists(), "{out}");
    assert!(
        fleet.path(&format!("{name}.minisig")).exists(),
        "signed with -s"
    );
    start(&fleet, &file);
    fleet.publish_signed(&file, &good);
    service.wait_for_sha(&sha);
    let log = service.wait_log("installed from a delta patch", Duration::from_secs(20));
    assert_eq!(service.log_count("downloaded candidate"), 0, "{log}");
    assert!(!log.contains("delta patch unusable"), "{log}");
    assert_eq!(std::fs::read(&service.bin).unwrap(), good);

    // The next patch is corrupt, though signed: the host says so and downloads the release.
    let next = util::with_trailer(&util::example("testbed"), "version:0.3.0");
    let next_sha = util::sha256_hex(&next);
    let file = fleet.stage(&next);
    patch(&fleet, &good, &file);
    let name = fleet.path(&delta::patch_name(&sha, &next_sha));
    let mut bytes = std::fs::read(&name).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&name, &bytes).unwrap();
    fleet.sign(&name);
    start(&fleet, &file);
    fleet.publish_signed(&file, &next);
    service.wait_for_sha(&next_sha);
    let log = service.wait_log("downloaded candidate", Duration::from_secs(20));
    let line = log
        .lines()
        .find(|l| l.contains("delta patch unusable"))
        .unwrap_or_else(|| panic!("no warning about the patch:\n{log}"));
    assert!(line.contains("downloading the whole release"), "{line}");
    assert_eq!(
        service.log_count("installed from a delta patch"),
        1,
        "only the first release: {log}"
    );
    assert_eq!(std::fs::read(&service.bin).unwrap(), next);
}

/// `handover rollout patch --from OLD NEW`, signed with the fleet's key.
fn patch(fleet: &Fleet, old: &[u8], new: &Path) -> String {
    let from = fleet.path("staging/old");
    std::fs::write(&from, old).unwrap();
    fleet.cli(&["patch", "--from", from.to_str().unwrap()], Some(new))
}

fn start(fleet: &Fleet, file: &Path) {
    let out = fleet.cli(&["start", "--steps", "100%"], Some(file));
    assert!(out.contains("started (serial 1)"), "{out}");
}
