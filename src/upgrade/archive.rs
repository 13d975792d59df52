//! Taking the binary out of a downloaded release archive: `.gz`, `.tar.gz`/`.tgz`, `.zip`.
//!
//! The download has been staged (and its published SHA-256 checked) by the time this runs; the
//! binary is streamed from the archive file into a new file, hashed as it is written, never held
//! in memory. Only that one member is written, so extraction cannot escape a directory. Archives
//! that try anyway are still refused as a whole, because an entry named `../x`, an absolute
//! path, a link or a device node in a release archive means it was not built by the release
//! process:
//!
//! - a path with a `..` component: [`ArchiveError::Traversal`];
//! - an absolute path (`/x`, `\x`, `C:x`): [`ArchiveError::Absolute`];
//! - a symbolic or hard link: [`ArchiveError::Link`];
//! - a device, FIFO or socket: [`ArchiveError::Special`];
//! - an entry larger than the limit (by its header, or by what it actually inflates to), or a
//!   tar stream inflating to more than about [`TOTAL_FACTOR`] times the limit:
//!   [`ArchiveError::TooLarge`];
//! - two entries that both match the member (by path or by file name):
//!   [`ArchiveError::Ambiguous`].
//!
//! CPU- and I/O-bound: the pipeline calls [`unpack`] through `tokio::task::spawn_blocking`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use flate2::read::{GzDecoder, MultiGzDecoder};
use handover_fetcher::ArchiveFormat;
use sha2::{Digest, Sha256};

/// A tar stream may inflate to at most this many times the limit (plus [`TAR_SLACK`] for
/// headers), skipped entries included: a decompression bomb in an entry nobody asked for must
/// not keep the CPU busy for hours.
pub(crate) const TOTAL_FACTOR: u64 = 4;

/// Room for tar headers and padding on top of `TOTAL_FACTOR` times the limit.
const TAR_SLACK: u64 = 1 << 20;

/// The binary as written to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// The SHA-256 of what was written.
    pub(crate) sha256: [u8; 32],
    /// How many bytes were written.
    pub(crate) size: u64,
}

/// Why the binary could not be taken out of an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ArchiveError {
    /// An entry's path has a `..` component.
    #[error("archive entry {entry:?} has a `..` component; refusing the archive")]
    Traversal { entry: String },
    /// An entry's path is absolute.
    #[error("archive entry {entry:?} is an absolute path; refusing the archive")]
    Absolute { entry: String },
    /// An entry is a symbolic or hard link.
    #[error("archive entry {entry:?} is a link (to {target:?}); refusing the archive")]
    Link { entry: String, target: String },
    /// An entry is a device node, FIFO, socket or other special file.
    #[error("archive entry {entry:?} is a {kind}, not a regular file; refusing the archive")]
    Special { entry: String, kind: &'static str },
    /// An entry (or, for `entry = "the whole archive"`, everything) is larger than the limit.
    #[error("archive entry {entry:?} is larger than the limit ({limit} bytes)")]
    TooLarge { entry: String, limit: u64 },
    /// No entry matches the member.
    #[error("no {member:?} in the archive; it holds: {}", list(entries))]
    NotFound {
        member: String,
        /// The regular files the archive holds (at most 50).
        entries: Vec<String>,
    },
    /// Several entries match the member, by path or by file name (or one path occurs twice).
    #[error(
        "{member:?} is ambiguous in the archive: {}; refusing the archive",
        list(entries)
    )]
    Ambiguous {
        member: String,
        entries: Vec<String>,
    },
    /// The archive is encrypted or uses a compression method this build cannot read.
    #[error("archive entry {entry:?} is {what}")]
    Unsupported { entry: String, what: String },
    /// The archive could not be read or the binary not written (disk full, permissions): a
    /// local failure, not the archive's fault. The message names the file.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The archive is corrupt or truncated.
    #[error("corrupt {format} archive: {source}")]
    Corrupt {
        format: ArchiveFormat,
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

/// Takes `member` out of the archive file at `archive` (format `format`;
/// [`ArchiveFormat::Sniff`] = tell from the bytes, and a file that is neither zip nor gzip is
/// then the binary itself), writing it to the new file `dest` (created, mode 0o600), hashing as
/// it writes, refusing more than `limit` bytes of output. On error `dest` is removed.
///
/// `member` is matched against each entry's path (a leading `./` ignored) and file name; exactly
/// one entry may match. It is unused for [`ArchiveFormat::Gzip`].
pub(crate) fn unpack(
    archive: &Path,
    format: ArchiveFormat,
    member: &str,
    dest: &Path,
    limit: u64,
) -> Result<Unpacked, ArchiveError> {
    let reading = |e: io::Error| ArchiveError::Io(context("reading", archive, e));
    let format = match format {
        ArchiveFormat::Sniff => sniff(archive).map_err(reading)?,
        known => Some(known),
    };
    let file = File::open(archive).map_err(reading)?;
    let mut out = Output::new(dest);
    let result = match format {
        None => out.copy(file, member, limit).map_err(|e| match e {
            CopyFailure::Read(source) => reading(source),
            other => other.into_error(ArchiveFormat::Sniff),
        }),
        Some(ArchiveFormat::Gzip) => out
            .copy(MultiGzDecoder::new(file), member, limit)
            .map_err(|e| e.into_error(ArchiveFormat::Gzip)),
        Some(ArchiveFormat::TarGz) => untar(file, member, limit, &mut out),
        Some(ArchiveFormat::Zip) => unzip(file, member, limit, &mut out),
        Some(other) => Err(ArchiveError::Unsupported {
            entry: member.to_string(),
            what: format!("packed as {other}, which this build cannot read"),
        }),
    };
    match result.and_then(|()| out.finish()) {
        Ok(unpacked) => Ok(unpacked),
        Err(e) => {
            out.discard();
            Err(e)
        }
    }
}

/// The format a file starts with: a zip or gzip signature (a gzip stream holding a tar archive
/// is [`ArchiveFormat::TarGz`]); `None` for anything else.
pub(crate) fn sniff(path: &Path) -> io::Result<Option<ArchiveFormat>> {
    let mut file = File::open(path)?;
    let mut magic = Vec::with_capacity(4);
    (&mut file).take(4).read_to_end(&mut magic)?;
    if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
        return Ok(Some(ArchiveFormat::Zip));
    }
    if !magic.starts_with(&[0x1f, 0x8b]) {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(512);
    let _ = GzDecoder::new(File::open(path)?)
        .take(512)
        .read_to_end(&mut head);
    Ok(Some(if head.len() >= 262 && &head[257..262] == b"ustar" {
        ArchiveFormat::TarGz
    } else {
        ArchiveFormat::Gzip
    }))
}

/// `err`, saying what was being done to which file.
fn context(doing: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{doing} {}: {err}", path.display()))
}

/// Why copying an entry's content stopped.
enum CopyFailure {
    TooLarge(ArchiveError),
    Read(io::Error),
    Write(ArchiveError),
}

impl CopyFailure {
    fn into_error(self, format: ArchiveFormat) -> ArchiveError {
        match self {
            Self::TooLarge(e) | Self::Write(e) => e,
            Self::Read(source) => ArchiveError::Corrupt { format, source },
        }
    }
}

/// The destination file, created on first use, removed by [`Output::discard`].
struct Output<'a> {
    path: &'a Path,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
}

impl<'a> Output<'a> {
    fn new(path: &'a Path) -> Self {
        Self {
            path,
            file: None,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn write_error(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Io(context("writing", self.path, source))
    }

    /// Streams all of `reader` into the file, failing once it passes `limit` bytes (whatever a
    /// header claimed: decompression bombs lie).
    fn copy(&mut self, mut reader: impl Read, entry: &str, limit: u64) -> Result<(), CopyFailure> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.path)
                .map_err(|e| CopyFailure::Write(self.write_error(e)))?;
            self.file = Some(file);
        }
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyFailure::Read(e)),
            };
            self.size += n as u64;
            if self.size > limit {
                return Err(CopyFailure::TooLarge(ArchiveError::TooLarge {
                    entry: entry.to_string(),
                    limit,
                }));
            }
            self.hasher.update(&buffer[..n]);
            let written = match self.file.as_mut() {
                Some(file) => file.write_all(&buffer[..n]),
                None => Ok(()),
            };
            written.map_err(|e| CopyFailure::Write(self.write_error(e)))?;
        }
    }

    fn finish(&mut self) -> Result<Unpacked, ArchiveError> {
        if let Some(file) = &self.file {
            file.sync_all().map_err(|e| self.write_error(e))?;
        }
        Ok(Unpacked {
            sha256: self.hasher.clone().finalize().into(),
            size: self.size,
        })
    }

    /// Removes the file, if this created it.
    fn discard(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// Refuses `..` components and absolute paths. `/` and `\` both separate components (zip
/// files made on Windows use `\`).
fn check_path(entry: &str) -> Result<(), ArchiveError> {
    let bytes = entry.as_bytes();
    let absolute = entry.starts_with('/')
        || entry.starts_with('\\')
        || (bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic());
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

/// Which regular files match the member, and what the archive holds (for errors).
struct Matcher<'a> {
    member: &'a str,
    matched: Vec<String>,
    files: Vec<String>,
}

impl<'a> Matcher<'a> {
    fn new(member: &'a str) -> Self {
        Self {
            member: member.trim_start_matches("./"),
            matched: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Whether the regular file at `path` is the member; a second match is refused.
    fn matches(&mut self, path: &str) -> Result<bool, ArchiveError> {
        let path = path.trim_start_matches("./");
        if self.files.len() < 50 {
            self.files.push(path.to_string());
        }
        if path != self.member && file_name(path) != self.member {
            return Ok(false);
        }
        self.matched.push(path.to_string());
        if self.matched.len() > 1 {
            return Err(ArchiveError::Ambiguous {
                member: self.member.to_string(),
                entries: std::mem::take(&mut self.matched),
            });
        }
        Ok(true)
    }

    fn finish(self) -> Result<(), ArchiveError> {
        if self.matched.is_empty() {
            return Err(ArchiveError::NotFound {
                member: self.member.to_string(),
                entries: self.files,
            });
        }
        Ok(())
    }
}

fn file_name(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.rsplit('/').next().unwrap_or(path)
}

fn special(entry: String, kind: &'static str) -> ArchiveError {
    ArchiveError::Special { entry, kind }
}

/// Counts what a reader yields and fails past a bound.
struct Bounded<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.remaining = self.remaining.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::FileTooLarge, "the archive inflates too far")
        })?;
        Ok(n)
    }
}

fn untar(file: File, member: &str, limit: u64, out: &mut Output<'_>) -> Result<(), ArchiveError> {
    use tar::EntryType;

    let total = limit.saturating_mul(TOTAL_FACTOR).saturating_add(TAR_SLACK);
    let corrupt = |source: io::Error| {
        if source.kind() == io::ErrorKind::FileTooLarge {
            ArchiveError::TooLarge {
                entry: "the whole archive".into(),
                limit: total,
            }
        } else {
            ArchiveError::Corrupt {
                format: ArchiveFormat::TarGz,
                source,
            }
        }
    };
    let mut archive = tar::Archive::new(Bounded {
        inner: MultiGzDecoder::new(file),
        remaining: total,
    });
    let mut matcher = Matcher::new(member);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        // Raw bytes (GNU long names and PAX paths included), so that no normalisation hides
        // a `..` or a leading `/`.
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        check_path(&path)?;
        match entry.header().entry_type() {
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
        if matcher.matches(&path)? {
            out.copy(&mut entry, &path, limit).map_err(|e| match e {
                CopyFailure::Read(source) => corrupt(source),
                other => other.into_error(ArchiveFormat::TarGz),
            })?;
        }
    }
    matcher.finish()
}

fn unzip(file: File, member: &str, limit: u64, out: &mut Output<'_>) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        format: ArchiveFormat::Zip,
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    };
    let mut archive = zip::ZipArchive::new(file).map_err(corrupt)?;
    let mut matcher = Matcher::new(member);
    let mut found = None;
    // Every entry is checked before anything is written: a refused archive writes nothing.
    for index in 0..archive.len() {
        let stored_name = archive
            .name_for_index(index)
            .and_then(Result::ok)
            .map_or_else(|| "?".to_string(), |name| name.into_owned());
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::UnsupportedArchive(what)) => {
                return Err(ArchiveError::Unsupported {
                    entry: stored_name,
                    what: what.to_string(),
                });
            }
            Err(e) => return Err(corrupt(e)),
        };
        let path = entry.name().map_err(corrupt)?.into_owned();
        check_path(&path)?;
        if entry.is_symlink() {
            let mut target = Vec::new();
            let _ = (&mut entry).take(4096).read_to_end(&mut target);
            return Err(ArchiveError::Link {
                entry: path,
                target: String::from_utf8_lossy(&target).into_owned(),
            });
        }
        if entry.is_dir() {
            continue;
        }
        if let Some(mode) = entry.unix_mode() {
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
        if entry.encrypted() {
            return Err(ArchiveError::Unsupported {
                entry: path,
                what: "encrypted".into(),
            });
        }
        if entry.size() > limit {
            return Err(ArchiveError::TooLarge { entry: path, limit });
        }
        if matcher.matches(&path)? {
            found = Some((index, path));
        }
    }
    matcher.finish()?;
    let Some((index, path)) = found else {
        return Ok(());
    };
    let entry = archive.by_index(index).map_err(corrupt)?;
    out.copy(entry, &path, limit)
        .map_err(|e| e.into_error(ArchiveFormat::Zip))
}

#[cfg(test)]
#[path = "archive/tests.rs"]
mod tests;
