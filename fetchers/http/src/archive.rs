//! Taking one binary out of a release archive: `.gz`, `.tar.gz`/`.tgz`, `.zip`, or raw bytes.
//!
//! Nothing is written to disk: the binary is read into memory, so extraction cannot escape a
//! directory. Archives that try anyway are still refused as a whole, because an entry named
//! `../x`, an absolute path, a link or a device node in a release archive means it was not
//! built by the release process:
//!
//! - a path with a `..` component: [`ArchiveError::Traversal`];
//! - an absolute path (`/x`, `\x`, `C:x`): [`ArchiveError::Absolute`];
//! - a symbolic or hard link: [`ArchiveError::Link`];
//! - a device, FIFO or socket: [`ArchiveError::Special`];
//! - an entry larger than the limit (by its header, or by what it actually inflates to):
//!   [`ArchiveError::TooLarge`].
//!
//! ```
//! use handover_fetcher_http::archive::{extract, Format};
//!
//! // A raw download is its own binary.
//! let binary = extract(b"\x7fELF...", Format::Raw, "app", 1 << 20).unwrap();
//! assert_eq!(binary, b"\x7fELF...");
//! assert_eq!(Format::from_name("app-1.2.0-x86_64-unknown-linux-gnu.tar.gz"), Format::TarGz);
//! ```

use std::fs::File;
use std::io::{self, Cursor, Read, Seek};
use std::path::Path;

use flate2::read::{GzDecoder, MultiGzDecoder};
use handover_fetcher::Sha256;

use crate::net;

/// How a download is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// The binary itself.
    Raw,
    /// One gzip-compressed file (`.gz`).
    Gzip,
    /// A gzip-compressed tar archive (`.tar.gz`, `.tgz`).
    TarGz,
    /// A zip archive (stored or deflate entries).
    Zip,
}

impl Format {
    /// The format a file name announces by its extension (case-insensitive); [`Format::Raw`]
    /// when it announces none.
    pub fn from_name(name: &str) -> Self {
        Self::split(name).1
    }

    /// Splits a file name into its stem and its format: `app.tar.gz` → (`app`,
    /// [`Format::TarGz`]), `app` → (`app`, [`Format::Raw`]).
    pub fn split(name: &str) -> (&str, Self) {
        let lower = name.to_ascii_lowercase();
        for (extension, format) in [
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".zip", Self::Zip),
            (".gz", Self::Gzip),
        ] {
            if lower.ends_with(extension) && lower.len() > extension.len() {
                return (&name[..name.len() - extension.len()], format);
            }
        }
        (name, Self::Raw)
    }

    /// The format `bytes` start with: a zip or gzip signature (a gzip stream holding a tar
    /// archive is [`Format::TarGz`]); [`Format::Raw`] otherwise.
    pub fn sniff(bytes: &[u8]) -> Self {
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            return Self::Zip;
        }
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Self::Raw;
        }
        let mut head = Vec::with_capacity(512);
        let _ = GzDecoder::new(bytes).take(512).read_to_end(&mut head);
        if head.len() >= 262 && &head[257..262] == b"ustar" {
            Self::TarGz
        } else {
            Self::Gzip
        }
    }

    /// Whether this is an archive or compressed file rather than a raw binary.
    pub fn is_packed(self) -> bool {
        self != Self::Raw
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::Gzip => "gzip",
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
        })
    }
}

/// Why a binary could not be taken out of an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// An entry's path has a `..` component.
    #[error("archive entry {entry:?} has a `..` component; refusing the archive")]
    Traversal {
        /// The entry's path as stored.
        entry: String,
    },
    /// An entry's path is absolute.
    #[error("archive entry {entry:?} is an absolute path; refusing the archive")]
    Absolute {
        /// The entry's path as stored.
        entry: String,
    },
    /// An entry is a symbolic or hard link.
    #[error("archive entry {entry:?} is a link (to {target:?}); refusing the archive")]
    Link {
        /// The entry's path as stored.
        entry: String,
        /// Where it points, when the archive says.
        target: String,
    },
    /// An entry is a device node, FIFO, socket or other special file.
    #[error("archive entry {entry:?} is a {kind}, not a regular file; refusing the archive")]
    Special {
        /// The entry's path as stored.
        entry: String,
        /// What it is.
        kind: &'static str,
    },
    /// An entry is larger than the limit.
    #[error("archive entry {entry:?} is larger than the limit ({limit} bytes)")]
    TooLarge {
        /// The entry's path as stored.
        entry: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// No entry has the binary's name.
    #[error("no {binary:?} in the archive; it holds: {}", list(entries))]
    NotFound {
        /// The name looked for.
        binary: String,
        /// The regular files the archive holds (at most 50).
        entries: Vec<String>,
    },
    /// Several entries have the binary's file name and none has it as its full path.
    #[error(
        "{binary:?} is ambiguous in the archive: {}; name the entry by its path",
        list(entries)
    )]
    Ambiguous {
        /// The name looked for.
        binary: String,
        /// The matching entries.
        entries: Vec<String>,
    },
    /// The archive is encrypted or uses a compression method this build cannot read.
    #[error("archive entry {entry:?} is {what}")]
    Unsupported {
        /// The entry's path as stored.
        entry: String,
        /// What is unsupported.
        what: String,
    },
    /// The archive's SHA-256 is not the published one.
    #[error("archive sha256 {actual} does not match the published {published}")]
    DigestMismatch {
        /// The published digest, in hex.
        published: String,
        /// The archive's digest, in hex.
        actual: String,
    },
    /// The archive file could not be read.
    #[error("cannot read the archive: {0}")]
    Io(#[source] io::Error),
    /// The archive is corrupt or truncated.
    #[error("corrupt {format} archive: {source}")]
    Corrupt {
        /// The format being read.
        format: Format,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
}

fn list(entries: &[String]) -> String {
    if entries.is_empty() {
        "no regular files".into()
    } else {
        entries.join(", ")
    }
}

/// Takes `binary` out of `bytes` packed as `format`, refusing entries over `limit` bytes.
///
/// `binary` is matched against each entry's path (a leading `./` ignored); failing that,
/// against each entry's file name, which must then be unique. [`Format::Raw`] returns the bytes
/// as they are and [`Format::Gzip`] their decompressed content (`binary` is unused for both).
pub fn extract(
    bytes: &[u8],
    format: Format,
    binary: &str,
    limit: u64,
) -> Result<Vec<u8>, ArchiveError> {
    match format {
        Format::Raw => {
            if bytes.len() as u64 > limit {
                return Err(ArchiveError::TooLarge {
                    entry: binary.to_string(),
                    limit,
                });
            }
            Ok(bytes.to_vec())
        }
        Format::Gzip => gunzip(bytes, binary, limit),
        Format::TarGz => untar(bytes, binary, limit),
        Format::Zip => unzip(Cursor::new(bytes), binary, limit),
    }
}

/// Checks `bytes` against the `published` SHA-256 (when there is one), then [`extract`]s
/// `binary` and returns it with its own SHA-256: what a fetcher hands the core for a packed
/// download, since the core only sees (and verifies) the extracted binary. [`Format::Raw`]
/// for `format` means "unknown": the format is then [sniffed](Format::sniff) from the bytes.
///
/// CPU-bound on large archives: call it from `tokio::task::spawn_blocking`.
pub fn verify_and_extract(
    bytes: &[u8],
    format: Format,
    binary: &str,
    limit: u64,
    published: Option<Sha256>,
) -> Result<(Vec<u8>, Sha256), ArchiveError> {
    if let Some(published) = published {
        let actual = net::sha256(bytes);
        if actual != published {
            return Err(ArchiveError::DigestMismatch {
                published: net::hex(&published),
                actual: net::hex(&actual),
            });
        }
    }
    let format = if format.is_packed() {
        format
    } else {
        Format::sniff(bytes)
    };
    let content = extract(bytes, format, binary, limit)?;
    let digest = net::sha256(&content);
    Ok((content, digest))
}

/// [`extract`] from a file on disk.
pub fn extract_file(
    path: &Path,
    format: Format,
    binary: &str,
    limit: u64,
) -> Result<Vec<u8>, ArchiveError> {
    let mut file = File::open(path).map_err(ArchiveError::Io)?;
    match format {
        Format::Raw => {
            let mut out = Vec::new();
            read_limited(&mut file, binary, limit, &mut out).map_err(|e| e.into_error(format))?;
            Ok(out)
        }
        Format::Gzip => gunzip(file, binary, limit),
        Format::TarGz => untar(file, binary, limit),
        Format::Zip => unzip(file, binary, limit),
    }
}

fn gunzip(reader: impl Read, binary: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    let mut out = Vec::new();
    read_limited(MultiGzDecoder::new(reader), binary, limit, &mut out)
        .map_err(|e| e.into_error(Format::Gzip))?;
    Ok(out)
}

/// What reading an entry's content came to.
enum ReadFailure {
    TooLarge(ArchiveError),
    Io(io::Error),
}

impl ReadFailure {
    fn into_error(self, format: Format) -> ArchiveError {
        match self {
            Self::TooLarge(e) => e,
            Self::Io(source) => ArchiveError::Corrupt { format, source },
        }
    }
}

/// Reads all of `reader` into `out`, failing once it passes `limit` bytes (whatever a header
/// claimed: decompression bombs lie).
fn read_limited(
    reader: impl Read,
    entry: &str,
    limit: u64,
    out: &mut Vec<u8>,
) -> Result<(), ReadFailure> {
    reader
        .take(limit.saturating_add(1))
        .read_to_end(out)
        .map_err(ReadFailure::Io)?;
    if out.len() as u64 > limit {
        return Err(ReadFailure::TooLarge(ArchiveError::TooLarge {
            entry: entry.to_string(),
            limit,
        }));
    }
    Ok(())
}

/// Refuses `..` components and absolute paths. `/` and `\` both separate components (zip
/// files made on Windows use `\`).
fn check_path(entry: &str) -> Result<(), ArchiveError> {
    let absolute = entry.starts_with('/')
        || entry.starts_with('\\')
        || (entry.len() >= 2
            && entry.as_bytes()[1] == b':'
            && entry.as_bytes()[0].is_ascii_alphabetic());
    if absolute {
        return Err(ArchiveError::Absolute {
            entry: entry.to_string(),
        });
    }
    if entry.split(['/', '\\']).any(|part| part == "..") {
        return Err(ArchiveError::Traversal {
            entry: entry.to_string(),
        });
    }
    Ok(())
}

/// Finds the binary among the regular files seen.
struct Matcher<'a> {
    binary: &'a str,
    exact: Option<(String, Vec<u8>)>,
    by_name: Vec<(String, Vec<u8>)>,
    files: Vec<String>,
}

impl<'a> Matcher<'a> {
    fn new(binary: &'a str) -> Self {
        Self {
            binary: binary.trim_start_matches("./"),
            exact: None,
            by_name: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Whether the entry at `path` is (possibly) the binary, so its content must be read.
    fn wants(&mut self, path: &str) -> bool {
        let path = path.trim_start_matches("./");
        if self.files.len() < 50 {
            self.files.push(path.to_string());
        }
        path == self.binary || file_name(path) == self.binary
    }

    fn found(&mut self, path: &str, content: Vec<u8>) {
        let path = path.trim_start_matches("./").to_string();
        if path == self.binary {
            self.exact = Some((path, content));
        } else {
            self.by_name.push((path, content));
        }
    }

    fn finish(mut self) -> Result<Vec<u8>, ArchiveError> {
        if let Some((_, content)) = self.exact {
            return Ok(content);
        }
        match self.by_name.len() {
            0 => Err(ArchiveError::NotFound {
                binary: self.binary.to_string(),
                entries: self.files,
            }),
            1 => Ok(self.by_name.remove(0).1),
            _ => Err(ArchiveError::Ambiguous {
                binary: self.binary.to_string(),
                entries: self.by_name.into_iter().map(|(path, _)| path).collect(),
            }),
        }
    }
}

fn file_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

fn untar(reader: impl Read, binary: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    use tar::EntryType;

    let corrupt = |source| ArchiveError::Corrupt {
        format: Format::TarGz,
        source,
    };
    let mut archive = tar::Archive::new(MultiGzDecoder::new(reader));
    let mut matcher = Matcher::new(binary);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        // Raw bytes (GNU long names and PAX paths included), so that no normalisation hides
        // a `..` or a leading `/`.
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        check_path(&path)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous => {}
            EntryType::Directory => continue,
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                return Err(ArchiveError::Link {
                    entry: path,
                    target,
                });
            }
            EntryType::Char => return Err(special(path, "character device")),
            EntryType::Block => return Err(special(path, "block device")),
            EntryType::Fifo => return Err(special(path, "FIFO")),
            EntryType::GNUSparse => return Err(special(path, "sparse file")),
            // PAX and GNU metadata records are folded into the next entry by `tar`; anything
            // still standing here is of a kind a release archive has no use for.
            _ => return Err(special(path, "special tar entry")),
        }
        let size = entry.header().size().map_err(corrupt)?;
        if size > limit {
            return Err(ArchiveError::TooLarge { entry: path, limit });
        }
        if matcher.wants(&path) {
            let mut content = Vec::with_capacity(size as usize);
            read_limited(&mut entry, &path, limit, &mut content)
                .map_err(|e| e.into_error(Format::TarGz))?;
            matcher.found(&path, content);
        }
    }
    matcher.finish()
}

fn special(entry: String, kind: &'static str) -> ArchiveError {
    ArchiveError::Special { entry, kind }
}

fn unzip(reader: impl Read + Seek, binary: &str, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        format: Format::Zip,
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    };
    let mut archive = zip::ZipArchive::new(reader).map_err(corrupt)?;
    let mut matcher = Matcher::new(binary);
    for index in 0..archive.len() {
        let stored_name = archive
            .name_for_index(index)
            .and_then(Result::ok)
            .map_or_else(|| "?".to_string(), |name| name.into_owned());
        let mut file = match archive.by_index(index) {
            Ok(file) => file,
            Err(zip::result::ZipError::UnsupportedArchive(what)) => {
                return Err(ArchiveError::Unsupported {
                    entry: stored_name,
                    what: what.to_string(),
                });
            }
            Err(e) => return Err(corrupt(e)),
        };
        let path = file.name().map_err(corrupt)?.into_owned();
        check_path(&path)?;
        if file.is_symlink() {
            let mut target = Vec::new();
            let _ = (&mut file).take(4096).read_to_end(&mut target);
            return Err(ArchiveError::Link {
                entry: path,
                target: String::from_utf8_lossy(&target).into_owned(),
            });
        }
        if file.is_dir() {
            continue;
        }
        if let Some(mode) = file.unix_mode() {
            let kind = match mode & 0o170_000 {
                0 | 0o100_000 => None,
                0o020_000 => Some("character device"),
                0o060_000 => Some("block device"),
                0o010_000 => Some("FIFO"),
                0o140_000 => Some("socket"),
                _ => Some("special file"),
            };
            if let Some(kind) = kind {
                return Err(special(path, kind));
            }
        }
        if file.encrypted() {
            return Err(ArchiveError::Unsupported {
                entry: path,
                what: "encrypted".into(),
            });
        }
        if file.size() > limit {
            return Err(ArchiveError::TooLarge { entry: path, limit });
        }
        if matcher.wants(&path) {
            let mut content = Vec::with_capacity(file.size() as usize);
            read_limited(&mut file, &path, limit, &mut content)
                .map_err(|e| e.into_error(Format::Zip))?;
            matcher.found(&path, content);
        }
    }
    matcher.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use zip::write::SimpleFileOptions;

    use super::*;

    const BINARY: &[u8] = b"\x7fELF pretend binary";

    /// A tar.gz from (path, content, type, link target) entries. Paths are written into the
    /// header bytes directly: `tar::Builder` would refuse the malicious ones.
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

    fn file<'a>(
        path: &'a str,
        content: &'static [u8],
    ) -> (&'a str, &'static [u8], tar::EntryType, &'static str) {
        (path, content, tar::EntryType::Regular, "")
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
    fn formats_from_names() {
        assert_eq!(Format::split("app.tar.gz"), ("app", Format::TarGz));
        assert_eq!(Format::split("APP.TGZ"), ("APP", Format::TarGz));
        assert_eq!(Format::split("app.zip"), ("app", Format::Zip));
        assert_eq!(Format::split("app.gz"), ("app", Format::Gzip));
        assert_eq!(Format::split("app-x86_64"), ("app-x86_64", Format::Raw));
        assert_eq!(Format::split(".gz"), (".gz", Format::Raw));
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(Format::sniff(BINARY), Format::Raw);
        assert_eq!(Format::sniff(&targz(&[file("app", BINARY)])), Format::TarGz);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(BINARY).unwrap();
        assert_eq!(Format::sniff(&gz.finish().unwrap()), Format::Gzip);
        let zip = zip_of(|w| {
            w.start_file("app", deflated()).unwrap();
            w.write_all(BINARY).unwrap();
        });
        assert_eq!(Format::sniff(&zip), Format::Zip);
    }

    #[test]
    fn raw_and_gzip() {
        assert_eq!(extract(BINARY, Format::Raw, "app", 100).unwrap(), BINARY);
        assert!(matches!(
            extract(BINARY, Format::Raw, "app", 3),
            Err(ArchiveError::TooLarge { .. })
        ));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(BINARY).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(extract(&gz, Format::Gzip, "app", 100).unwrap(), BINARY);
        assert!(matches!(
            extract(&gz, Format::Gzip, "app", 5),
            Err(ArchiveError::TooLarge { .. })
        ));
        assert!(matches!(
            extract(b"\x1f\x8b garbage", Format::Gzip, "app", 100),
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
        assert_eq!(
            extract(&archive, Format::TarGz, "app", 1 << 20).unwrap(),
            BINARY
        );
        assert_eq!(
            extract(&archive, Format::TarGz, "app-1.2.0/app", 1 << 20).unwrap(),
            BINARY
        );
        match extract(&archive, Format::TarGz, "other", 1 << 20) {
            Err(ArchiveError::NotFound { entries, .. }) => {
                assert_eq!(entries, ["app-1.2.0/README.md", "app-1.2.0/app"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tar_gz_ambiguous_names_need_a_path() {
        let archive = targz(&[file("a/app", BINARY), file("b/app", b"other")]);
        assert!(matches!(
            extract(&archive, Format::TarGz, "app", 1 << 20),
            Err(ArchiveError::Ambiguous { .. })
        ));
        assert_eq!(
            extract(&archive, Format::TarGz, "b/app", 1 << 20).unwrap(),
            b"other"
        );
    }

    #[test]
    fn tar_gz_rejects_parent_components() {
        let archive = targz(&[file("app", BINARY), file("../evil", b"x")]);
        let err = extract(&archive, Format::TarGz, "app", 1 << 20).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Traversal { ref entry } if entry == "../evil"),
            "{err}"
        );
        let archive = targz(&[file("dir/../../app", BINARY)]);
        assert!(matches!(
            extract(&archive, Format::TarGz, "app", 1 << 20),
            Err(ArchiveError::Traversal { .. })
        ));
    }

    #[test]
    fn tar_gz_rejects_absolute_paths() {
        let archive = targz(&[file("/usr/bin/app", BINARY)]);
        let err = extract(&archive, Format::TarGz, "app", 1 << 20).unwrap_err();
        assert!(matches!(err, ArchiveError::Absolute { .. }), "{err}");
        assert!(err.to_string().contains("/usr/bin/app"), "{err}");
    }

    #[test]
    fn tar_gz_rejects_links() {
        for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
            let archive = targz(&[("app", b"", kind, "/etc/passwd")]);
            let err = extract(&archive, Format::TarGz, "app", 1 << 20).unwrap_err();
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
            let err = extract(&archive, Format::TarGz, "app", 1 << 20).unwrap_err();
            assert!(
                matches!(err, ArchiveError::Special { kind, .. } if kind == name),
                "{err}"
            );
        }
    }

    #[test]
    fn tar_gz_rejects_large_entries() {
        let archive = targz(&[file("app", BINARY), file("big", &[0; 4096])]);
        let err = extract(&archive, Format::TarGz, "app", 1024).unwrap_err();
        assert!(
            matches!(err, ArchiveError::TooLarge { ref entry, limit: 1024 } if entry == "big"),
            "{err}"
        );
    }

    #[test]
    fn tar_gz_truncated_is_corrupt() {
        let archive = targz(&[file("app", &[7; 10_000])]);
        let err =
            extract(&archive[..archive.len() / 2], Format::TarGz, "app", 1 << 20).unwrap_err();
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
        assert_eq!(
            extract(&archive, Format::Zip, "app", 1 << 20).unwrap(),
            BINARY
        );
        assert!(matches!(
            extract(&archive, Format::Zip, "nope", 1 << 20),
            Err(ArchiveError::NotFound { .. })
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
            let err = extract(&archive, Format::Zip, "app", 1 << 20).unwrap_err();
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
        let err = extract(&archive, Format::Zip, "app", 1 << 20).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Link { ref target, .. } if target == "/bin/sh"),
            "{err}"
        );

        let archive = zip_of(|w| {
            let device = deflated().external_attributes((0o020_644) << 16);
            w.start_file("tty", device).unwrap();
        });
        let err = extract(&archive, Format::Zip, "app", 1 << 20).unwrap_err();
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
            extract(&archive, Format::Zip, "app", 1000),
            Err(ArchiveError::TooLarge { .. })
        ));
    }

    #[test]
    fn verifies_before_extracting() {
        let archive = targz(&[file("bin/app", BINARY)]);
        let digest = net::sha256(&archive);
        let (content, sha) =
            verify_and_extract(&archive, Format::Raw, "app", 1 << 20, Some(digest)).unwrap();
        assert_eq!((content.as_slice(), sha), (BINARY, net::sha256(BINARY)));
        let err =
            verify_and_extract(&archive, Format::TarGz, "app", 1 << 20, Some([1; 32])).unwrap_err();
        assert!(matches!(err, ArchiveError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&net::hex(&digest)), "{err}");
    }

    #[test]
    fn extracts_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.tar.gz");
        std::fs::write(&path, targz(&[file("bin/app", BINARY)])).unwrap();
        assert_eq!(
            extract_file(&path, Format::from_name("app.tar.gz"), "app", 1 << 20).unwrap(),
            BINARY
        );
        let err = extract_file(&dir.path().join("missing"), Format::Raw, "app", 1).unwrap_err();
        assert!(matches!(err, ArchiveError::Io(_)), "{err}");
    }
}
