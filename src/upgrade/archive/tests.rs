use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;

use flate2::write::GzEncoder;
use flate2::Compression;
use zip::write::SimpleFileOptions;

use super::*;

const BINARY: &[u8] = b"\x7fELF pretend binary";

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Writes `bytes` to a file and unpacks `member` from it; returns what was written.
fn extract(
    bytes: &[u8],
    format: ArchiveFormat,
    member: &str,
    limit: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let dir = tempfile::tempdir().unwrap();
    let (archive, dest) = (dir.path().join("download"), dir.path().join("binary"));
    std::fs::write(&archive, bytes).unwrap();
    match unpack(&archive, format, member, &dest, limit) {
        Ok(unpacked) => {
            let content = std::fs::read(&dest).unwrap();
            assert_eq!(unpacked.size, content.len() as u64);
            assert_eq!(unpacked.sha256, digest(&content));
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            Ok(content)
        }
        Err(e) => {
            assert!(!dest.exists(), "{} left behind after {e}", dest.display());
            Err(e)
        }
    }
}

/// A tar.gz from (path, content, type, link target) entries. Paths are written into the header
/// bytes directly: `tar::Builder` would refuse the malicious ones.
fn targz(entries: &[(&str, &[u8], tar::EntryType, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, content, kind, target) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o755);
        header.set_size(content.len() as u64);
        if !target.is_empty() {
            header.set_link_name_literal(target).unwrap();
        }
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn file<'a>(path: &'a str, content: &'a [u8]) -> (&'a str, &'a [u8], tar::EntryType, &'a str) {
    (path, content, tar::EntryType::Regular, "")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn zip_of(build: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    build(&mut writer);
    writer.finish().unwrap().into_inner()
}

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
}

#[test]
fn sniffs_formats() {
    let dir = tempfile::tempdir().unwrap();
    let sniffed = |bytes: &[u8]| {
        let path = dir.path().join("x");
        std::fs::write(&path, bytes).unwrap();
        sniff(&path).unwrap()
    };
    assert_eq!(sniffed(BINARY), None);
    assert_eq!(sniffed(b""), None);
    assert_eq!(
        sniffed(&targz(&[file("app", BINARY)])),
        Some(ArchiveFormat::TarGz)
    );
    assert_eq!(sniffed(&gzip(BINARY)), Some(ArchiveFormat::Gzip));
    let zip = zip_of(|w| {
        w.start_file("app", deflated()).unwrap();
        w.write_all(BINARY).unwrap();
    });
    assert_eq!(sniffed(&zip), Some(ArchiveFormat::Zip));
}

#[test]
fn sniffed_formats_are_unpacked_and_anything_else_is_the_binary() {
    let sniff = ArchiveFormat::Sniff;
    assert_eq!(extract(BINARY, sniff, "app", 100).unwrap(), BINARY);
    assert!(matches!(
        extract(BINARY, sniff, "app", 3),
        Err(ArchiveError::TooLarge { .. })
    ));
    let archive = targz(&[file("dist/app", BINARY)]);
    assert_eq!(extract(&archive, sniff, "app", 100).unwrap(), BINARY);
    assert_eq!(extract(&gzip(BINARY), sniff, "app", 100).unwrap(), BINARY);
}

#[test]
fn gzip_holds_one_file() {
    let gz = gzip(BINARY);
    let format = ArchiveFormat::Gzip;
    assert_eq!(extract(&gz, format, "ignored", 100).unwrap(), BINARY);
    assert!(matches!(
        extract(&gz, format, "app", 5),
        Err(ArchiveError::TooLarge { .. })
    ));
    assert!(matches!(
        extract(b"\x1f\x8b garbage", format, "app", 100),
        Err(ArchiveError::Corrupt { .. })
    ));
}

#[test]
fn tar_gz_finds_the_binary_by_path_or_name() {
    let archive = targz(&[
        ("app-1.2.0/", b"", tar::EntryType::Directory, ""),
        file("app-1.2.0/README.md", b"readme"),
        file("app-1.2.0/app", BINARY),
    ]);
    let format = ArchiveFormat::TarGz;
    assert_eq!(extract(&archive, format, "app", 1 << 20).unwrap(), BINARY);
    assert_eq!(
        extract(&archive, format, "./app-1.2.0/app", 1 << 20).unwrap(),
        BINARY
    );
    match extract(&archive, format, "other", 1 << 20) {
        Err(ArchiveError::NotFound { entries, .. }) => {
            assert_eq!(entries, ["app-1.2.0/README.md", "app-1.2.0/app"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tar_gz_ambiguous_names_need_a_path() {
    let archive = targz(&[file("a/app", BINARY), file("b/app", b"other")]);
    let format = ArchiveFormat::TarGz;
    assert!(matches!(
        extract(&archive, format, "app", 1 << 20),
        Err(ArchiveError::Ambiguous { .. })
    ));
    assert_eq!(
        extract(&archive, format, "b/app", 1 << 20).unwrap(),
        b"other"
    );
}

#[test]
fn an_entry_matching_by_path_and_another_by_name_are_ambiguous() {
    let archive = targz(&[file("app", BINARY), file("bin/app", b"other")]);
    let err = extract(&archive, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Ambiguous { entries, .. } if entries == &["app", "bin/app"]),
        "{err}"
    );
}

// regression: a tar holding the same path twice would have the second copy win on extraction,
// after a reviewer looked at the first.
#[test]
fn duplicate_entries_are_refused() {
    let archive = targz(&[file("app", BINARY), file("app", b"evil")]);
    let err = extract(&archive, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
    assert!(matches!(err, ArchiveError::Ambiguous { .. }), "{err}");
}

#[test]
fn tar_gz_rejects_parent_components() {
    let format = ArchiveFormat::TarGz;
    let archive = targz(&[file("app", BINARY), file("../evil", b"x")]);
    let err = extract(&archive, format, "app", 1 << 20).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Traversal { ref entry } if entry == "../evil"),
        "{err}"
    );
    let archive = targz(&[file("dir/../../app", BINARY)]);
    assert!(matches!(
        extract(&archive, format, "app", 1 << 20),
        Err(ArchiveError::Traversal { .. })
    ));
}

#[test]
fn tar_gz_rejects_absolute_paths() {
    let archive = targz(&[file("/usr/bin/app", BINARY)]);
    let err = extract(&archive, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
    assert!(matches!(err, ArchiveError::Absolute { .. }), "{err}");
    assert!(err.to_string().contains("/usr/bin/app"), "{err}");
}

#[test]
fn tar_gz_rejects_links() {
    for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
        let archive = targz(&[("app", b"", kind, "/etc/passwd")]);
        let err = extract(&archive, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Link { ref target, .. } if target == "/etc/passwd"),
            "{err}"
        );
    }
}

#[test]
fn tar_gz_rejects_devices() {
    for (kind, name) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Fifo, "FIFO"),
    ] {
        let archive = targz(&[file("app", BINARY), ("dev", b"", kind, "")]);
        let err = extract(&archive, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Special { kind, .. } if kind == name),
            "{err}"
        );
    }
}

#[test]
fn tar_gz_rejects_large_entries() {
    let archive = targz(&[file("app", BINARY), file("big", &[0; 4096])]);
    let err = extract(&archive, ArchiveFormat::TarGz, "app", 1024).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { ref entry, limit: 1024 } if entry == "big"),
        "{err}"
    );
}

#[test]
fn tar_gz_bounds_what_skipped_entries_inflate_to() {
    let junk = [0u8; 1000];
    // 800 entries of 1000 bytes, each under the limit, 1.2 MB of tar in all.
    let names: Vec<String> = (0..800).map(|i| format!("junk{i}")).collect();
    let mut all: Vec<_> = names.iter().map(|name| file(name, &junk)).collect();
    all.push(file("app", BINARY));
    let err = extract(&targz(&all), ArchiveFormat::TarGz, "app", 1000).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { ref entry, limit } if entry == "the whole archive" && limit == 4000 + (1 << 20)),
        "{err}"
    );
}

#[test]
fn tar_gz_truncated_is_corrupt() {
    let archive = targz(&[file("app", &[7; 10_000])]);
    let half = &archive[..archive.len() / 2];
    let err = extract(half, ArchiveFormat::TarGz, "app", 1 << 20).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
}

#[test]
fn zip_finds_the_binary() {
    let archive = zip_of(|w| {
        w.add_directory("app-1.2.0/", deflated()).unwrap();
        w.start_file("app-1.2.0/app", deflated().unix_permissions(0o755))
            .unwrap();
        w.write_all(BINARY).unwrap();
        w.start_file("app-1.2.0/LICENSE", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"MIT").unwrap();
    });
    let format = ArchiveFormat::Zip;
    assert_eq!(extract(&archive, format, "app", 1 << 20).unwrap(), BINARY);
    assert!(matches!(
        extract(&archive, format, "nope", 1 << 20),
        Err(ArchiveError::NotFound { .. })
    ));
}

#[test]
fn zip_ambiguous_names_are_refused() {
    let archive = zip_of(|w| {
        for name in ["a/app", "b/app"] {
            w.start_file(name, deflated()).unwrap();
            w.write_all(BINARY).unwrap();
        }
    });
    assert!(matches!(
        extract(&archive, ArchiveFormat::Zip, "app", 1 << 20),
        Err(ArchiveError::Ambiguous { .. })
    ));
}

#[test]
fn zip_rejects_parent_components_and_absolute_paths() {
    for (name, traversal) in [
        ("../evil", true),
        ("a\\..\\..\\evil", true),
        ("/etc/evil", false),
        ("C:evil", false),
    ] {
        let archive = zip_of(|w| {
            w.start_file(name, deflated()).unwrap();
            w.write_all(b"x").unwrap();
        });
        let err = extract(&archive, ArchiveFormat::Zip, "app", 1 << 20).unwrap_err();
        if traversal {
            assert!(
                matches!(err, ArchiveError::Traversal { .. }),
                "{name}: {err}"
            );
        } else {
            assert!(
                matches!(err, ArchiveError::Absolute { .. }),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn zip_rejects_symlinks_and_devices() {
    let archive = zip_of(|w| w.add_symlink("app", "/bin/sh", deflated()).unwrap());
    let err = extract(&archive, ArchiveFormat::Zip, "app", 1 << 20).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Link { ref target, .. } if target == "/bin/sh"),
        "{err}"
    );

    let archive = zip_of(|w| {
        let device = deflated().external_attributes((0o020_644) << 16);
        w.start_file("tty", device).unwrap();
    });
    let err = extract(&archive, ArchiveFormat::Zip, "app", 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::Special {
                kind: "character device",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zip_rejects_large_entries() {
    let archive = zip_of(|w| {
        w.start_file("app", deflated()).unwrap();
        w.write_all(&[0; 100_000]).unwrap();
    });
    assert!(matches!(
        extract(&archive, ArchiveFormat::Zip, "app", 1000),
        Err(ArchiveError::TooLarge { .. })
    ));
}

#[test]
fn never_overwrites_and_io_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, dest) = (dir.path().join("app.gz"), dir.path().join("app"));
    std::fs::write(&archive, gzip(BINARY)).unwrap();
    std::fs::write(&dest, b"someone else's").unwrap();
    let err = unpack(&archive, ArchiveFormat::Gzip, "app", &dest, 100).unwrap_err();
    assert!(matches!(err, ArchiveError::Io(_)), "{err}");
    assert!(err.to_string().starts_with("writing "), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's", "kept");

    let missing = dir.path().join("missing");
    let err = unpack(&missing, ArchiveFormat::Sniff, "app", &dest, 1).unwrap_err();
    assert!(matches!(err, ArchiveError::Io(_)), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}
