//! The GitHub-release fetcher end to end: a service under handover polls a fake GitHub (REST
//! API and asset storage on 127.0.0.1, shaped like GitHub's) and upgrades itself when a newer
//! release is published.
#![cfg(feature = "github")]

#[path = "../fetchers/github/tests/support/mod.rs"]
mod fake;
mod util;

use std::time::Duration;

use fake::{FakeGithub, FakeRelease, ASSET};
use util::load::{Load, Protocol};
use util::{Options, Service};

fn start(releases: Vec<FakeRelease>) -> (tokio::runtime::Runtime, FakeGithub) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let github = runtime.block_on(FakeGithub::start(releases));
    (runtime, github)
}

fn service_polling(github: &FakeGithub) -> Service {
    service_polling_with(github, "")
}

/// [`service_polling`] with `extra` lines in `[upgrade]`.
fn service_polling_with(github: &FakeGithub, extra: &str) -> Service {
    let config = format!(
        "fetcher = \"github\"\n[upgrade]\ninterval = \"500ms\"\nmax_backoff = \"1s\"\nprobation = \"2s\"\n{extra}\
         [github]\nrepo = \"acme/app\"\nbase_url = \"{}\"\ntarget = \"{}\"\nallow_insecure_loopback = true\ntoken = \"ghp_secret_for_tests\"\n",
        github.api.url(""),
        fake::TARGET
    );
    Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    })
}

fn release(id: u64, version: &str) -> FakeRelease {
    let binary = util::with_trailer(&util::example("testbed"), &format!("version:{version}"));
    FakeRelease::new(id, &format!("v{version}")).asset(ASSET, binary)
}

#[test]
fn a_published_release_upgrades_the_service_with_zero_failed_requests() {
    // The running testbed is 0.1.0; the latest release is older, then a newer one appears.
    let (_runtime, github) = start(vec![release(1, "0.0.5")]);
    let service = service_polling(&github);
    let master = service.pid();
    let worker = service.worker_pid();
    let load = Load::start(service.addr(), 64, Protocol::Http1, "/");
    load.wait_progress(300);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        service.worker_pid(),
        worker,
        "an older release must not be installed"
    );

    let newer = release(2, "0.3.0");
    let digest = util::sha256_hex(&newer.assets[0].bytes);
    github.set(|state| state.releases.insert(0, newer));
    service.wait_for_sha(&digest);
    load.wait_progress(300);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.pid(), master);
    service.wait_log("upgrade installed and serving", Duration::from_secs(10));
    // Nothing new after that: the release list is polled conditionally (answered 304).
    let polls = || github.api_requests("/repos/acme/app/releases/latest");
    let seen = polls().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while polls().len() < seen + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "polling stopped: {:?}",
            polls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        polls().last().unwrap().header("if-none-match").is_some(),
        "{:?}",
        polls()
    );
    assert!(
        !service.log().contains("ghp_secret_for_tests"),
        "the token was logged"
    );
}

#[test]
fn a_release_whose_checksum_file_is_corrected_for_the_same_bytes_is_installed() {
    let (_runtime, github) = start(vec![]);
    let service = service_polling(&github);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    // No digest on the asset; the release's SHA256SUMS names other bytes.
    let binary = util::with_trailer(&util::example("testbed"), "version:0.4.0");
    let lying = FakeRelease::new(3, "v0.4.0")
        .asset_without_digest(ASSET, binary)
        .asset("SHA256SUMS", format!("{}  {ASSET}\n", "ef".repeat(32)));
    github.set(|state| state.releases.insert(0, lying));
    service.wait_log(
        "does not match the published efefefefefef",
        Duration::from_secs(20),
    );
    service.assert_untouched(&live, worker, "checksum mismatch");
    assert!(
        !service.log().contains("quarantined"),
        "a wrong checksum is no reason to quarantine the bytes:\n{}",
        service.log()
    );

    // regression: the same bytes, re-published with a correct SHA256SUMS, were refused as
    // quarantined until the master restarted.
    let binary = util::with_trailer(&util::example("testbed"), "version:0.4.0");
    let digest = util::sha256_hex(&binary);
    let fixed = FakeRelease::new(3, "v0.4.0")
        .asset_without_digest(ASSET, binary)
        .asset("SHA256SUMS", format!("{digest}  {ASSET}\n"));
    github.set(|state| state.releases[0] = fixed);
    service.wait_for_sha(&digest);
}

#[test]
fn a_release_whose_checksum_asset_is_uploaded_last_is_installed_once_it_is_there() {
    let (_runtime, github) = start(vec![]);
    let service = service_polling(&github);
    let worker = service.worker_pid();
    let live = std::fs::read(&service.bin).unwrap();
    // `gh release create` uploads one asset after the other: first the binary alone.
    let binary = util::with_trailer(&util::example("testbed"), "version:0.5.0");
    let digest = util::sha256_hex(&binary);
    let half = FakeRelease::new(4, "v0.5.0").asset_without_digest(ASSET, binary.clone());
    github.set(|state| state.releases.insert(0, half));
    service.wait_log("waiting for the checksum", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    service.assert_untouched(&live, worker, "checksum not uploaded yet");
    let whole = FakeRelease::new(4, "v0.5.0")
        .asset_without_digest(ASSET, binary)
        .asset("SHA256SUMS", format!("{digest}  {ASSET}\n"));
    github.set(|state| state.releases[0] = whole);
    service.wait_for_sha(&digest);
}

#[test]
fn an_archive_release_is_checked_and_unpacked_by_the_core() {
    let (_runtime, github) = start(vec![]);
    let service = service_polling(&github);
    // `app-<target>.tar.gz` holding `dist/app`, with SHA256SUMS naming the archive.
    let binary = util::with_trailer(&util::example("testbed"), "version:0.6.0");
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("dist")).unwrap();
    std::fs::write(work.path().join("dist/app"), &binary).unwrap();
    let tarball = work.path().join("app.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(work.path())
        .arg("dist/app")
        .status()
        .unwrap();
    assert!(status.success());
    let archive = std::fs::read(&tarball).unwrap();
    let name = format!("{ASSET}.tar.gz");
    let release = FakeRelease::new(6, "v0.6.0")
        .asset_without_digest(&name, archive.clone())
        .asset(
            "SHA256SUMS",
            format!("{}  {name}\n", util::sha256_hex(&archive)),
        );
    github.set(|state| state.releases.insert(0, release));
    service.wait_for_sha(&util::sha256_hex(&binary));
    assert_eq!(std::fs::read(&service.bin).unwrap(), binary);
    service.wait_log(
        "unpacked the binary from the archive",
        Duration::from_secs(5),
    );
}

/// A `.tar.gz` of entries of zeros, written without inflating them: each MiB of zeros is one
/// self-contained, byte-aligned deflate chunk (a fresh compressor ended by a sync flush),
/// repeated; the gzip trailer's CRC is combined from the chunk's.
fn zero_bomb(entries: &[(&str, u64)]) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    const MIB: usize = 1 << 20;
    let chunk = |data: &[u8], flush: FlushCompress| {
        let mut compress = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        compress.compress_vec(data, &mut out, flush).unwrap();
        assert_eq!(compress.total_in() as usize, data.len());
        out
    };
    let zeros = vec![0u8; MIB];
    let zero_chunk = chunk(&zeros, FlushCompress::Sync);
    let mut zero_crc = Crc::new();
    zero_crc.update(&zeros);
    let mut crc = Crc::new();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let plain = |out: &mut Vec<u8>, crc: &mut Crc, bytes: &[u8]| {
        out.extend(chunk(bytes, FlushCompress::Sync));
        crc.update(bytes);
    };
    for (name, mib) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_size(mib * MIB as u64);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        plain(&mut out, &mut crc, header.as_bytes());
        for _ in 0..*mib {
            out.extend_from_slice(&zero_chunk);
            crc.combine(&zero_crc);
        }
    }
    plain(&mut out, &mut crc, &[0u8; 1024]);
    out.extend(chunk(&[], FlushCompress::Finish));
    out.extend(crc.sum().to_le_bytes());
    out.extend((crc.amount()).to_le_bytes());
    out
}

#[test]
fn a_small_archive_of_huge_entries_is_refused_without_hurting_the_master() {
    let (_runtime, github) = start(vec![]);
    let service = service_polling_with(&github, "max_size = \"64MiB\"\n");
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let name = format!("{ASSET}.tar.gz");
    let publish = |id: u64, archive: Vec<u8>| {
        let digest = util::sha256_hex(&archive);
        let release = FakeRelease::new(id, &format!("v0.{id}.0"))
            .asset_without_digest(&name, archive)
            .asset("SHA256SUMS", format!("{digest}  {name}\n"));
        github.set(|state| state.releases.insert(0, release));
    };

    // Ten entries of 1 GiB of zeros in 10 MB, the member among them.
    let names: Vec<String> = (0..9)
        .map(|i| format!("junk{i}"))
        .chain(["dist/app".into()])
        .collect();
    let entries: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1024)).collect();
    let bomb = zero_bomb(&entries);
    assert!(bomb.len() < 12 << 20, "{} bytes", bomb.len());
    publish(7, bomb);
    service.wait_log(
        "archive entry \"junk0\" is larger than the limit (67108864 bytes)",
        Duration::from_secs(30),
    );
    service.assert_untouched(&live, worker, "an archive of 1 GiB entries");

    // Entries under the limit, but 9 × 60 MiB of them: bounded by what the whole inflates to.
    let names: Vec<String> = (0..9).map(|i| format!("pad{i}")).collect();
    let entries: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 60)).collect();
    publish(8, zero_bomb(&entries));
    service.wait_log(
        "archive entry \"the whole archive\" is larger than the limit",
        Duration::from_secs(60),
    );
    service.assert_untouched(&live, worker, "an archive inflating to 540 MiB");
    assert!(
        service.temporary_files().is_empty(),
        "{:?}",
        service.temporary_files()
    );
    // The master streamed all of it: its peak memory is far below one entry.
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "master peak RSS after both archives: {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 60 * 1024, "master peak RSS {peak_kib} KiB");
}

#[test]
fn a_tag_that_disagrees_with_the_signed_version_is_refused_naming_both() {
    let (public, secret) = util::keypair();
    let (_runtime, github) = start(vec![]);
    let keys = format!("public_keys = [\"{}\"]\n", public.to_base64());
    let service = service_polling_with(&github, &keys);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let signed = |id: u64, tag: &str, binary: Vec<u8>, signed_version: &str| {
        let comment = util::release_comment(&binary, signed_version, "testbed");
        let signature = util::sign_with(&binary, &comment, &public, &secret);
        FakeRelease::new(id, tag)
            .asset(ASSET, binary)
            .asset(&format!("{ASSET}.minisig"), signature)
    };
    // The tag says 0.9.0; the publisher signed 0.8.0 (a retagged old build, or a tag edited by
    // someone who cannot sign).
    let old_build = util::with_trailer(&util::example("testbed"), "version:0.8.0");
    github.set(|state| {
        state
            .releases
            .insert(0, signed(9, "v0.9.0", old_build, "0.8.0"))
    });
    service.wait_log(
        "signed metadata says version=0.8.0 but the fetcher (an unsigned tag or object metadata) says version=0.9.0",
        Duration::from_secs(20),
    );
    service.assert_untouched(&live, worker, "tag and signature disagree");

    let fixed = util::with_trailer(&util::example("testbed"), "version:0.10.0");
    let sha = util::sha256_hex(&fixed);
    github.set(|state| {
        state
            .releases
            .insert(0, signed(10, "v0.10.0", fixed, "0.10.0"))
    });
    service.wait_for_sha(&sha);
}
