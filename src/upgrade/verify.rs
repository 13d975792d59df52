//! Where a download is verified: published checksum, minisign signature, complete ELF file,
//! downgrade policy.

use std::path::Path;

use crate::refusal::Refusal;

/// The bytes must match the SHA-256 the source published; with `required`, one must exist.
pub(crate) fn checksum(
    published: Option<&[u8; 32]>,
    actual: &[u8; 32],
    required: bool,
) -> Result<(), Refusal> {
    match published {
        Some(published) if published != actual => Err(Refusal::ChecksumMismatch {
            published: hex::encode(published),
            actual: hex::encode(actual),
        }),
        None if required => Err(Refusal::ChecksumMissing),
        _ => Ok(()),
    }
}

/// With public keys configured, the candidate must carry a minisign signature by one of them.
/// Returns the signature's trusted comment (covered by the signature), `None` without keys.
pub(crate) fn signature(
    keys: &[String],
    signature: Option<&[u8]>,
    file: &Path,
) -> Result<Option<String>, Refusal> {
    signed_by_one_of(keys, signature, |key, signature| {
        verify_file(key, signature, file)
    })
}

/// [`signature`] over bytes in memory (a binary made from a delta patch, the patch itself).
pub(crate) fn signature_of_bytes(
    keys: &[String],
    signature: Option<&[u8]>,
    bytes: &[u8],
) -> Result<Option<String>, Refusal> {
    signed_by_one_of(keys, signature, |key, signature| {
        key.verify(bytes, signature, false)
            .map_err(|e| e.to_string())
    })
}

fn signed_by_one_of(
    keys: &[String],
    signature: Option<&[u8]>,
    verify: impl Fn(&minisign_verify::PublicKey, &minisign_verify::Signature) -> Result<(), String>,
) -> Result<Option<String>, Refusal> {
    if keys.is_empty() {
        return Ok(None);
    }
    let Some(signature) = signature else {
        return Err(Refusal::SignatureMissing);
    };
    let text =
        std::str::from_utf8(signature).map_err(|_| invalid("signature is not minisign text"))?;
    let signature = minisign_verify::Signature::decode(text)
        .map_err(|e| invalid(format!("signature cannot be read: {e}")))?;
    let mut last_error = String::from("no key matched");
    for key in keys {
        let key = minisign_verify::PublicKey::from_base64(key.trim())
            .map_err(|e| invalid(format!("configured public key is invalid: {e}")))?;
        match verify(&key, &signature) {
            Ok(()) => return Ok(Some(signature.trusted_comment().to_string())),
            Err(e) => last_error = e,
        }
    }
    Err(invalid(format!("bad signature: {last_error}")))
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::SignatureInvalid {
        message: message.into(),
    }
}

fn verify_file(
    key: &minisign_verify::PublicKey,
    signature: &minisign_verify::Signature,
    file: &Path,
) -> Result<(), String> {
    use std::io::Read;
    let mut verifier = key.verify_stream(signature).map_err(|e| e.to_string())?;
    let mut input = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        verifier.update(&buffer[..n]);
    }
    verifier.finalize().map_err(|e| e.to_string())
}

/// An ELF candidate must contain everything its headers point at: a file cut short (an
/// interrupted copy, a truncated download with no published size) can still start, because the
/// part that is lost is often debug information, and fail later. Other files pass.
pub(crate) fn elf_intact(file: &Path) -> Result<(), Refusal> {
    let io = |e: std::io::Error| Refusal::transient(format!("reading {}: {e}", file.display()));
    let mut input = std::fs::File::open(file).map_err(io)?;
    let length = input.metadata().map_err(io)?.len();
    elf_intact_in(&mut input, length).map_err(|e| match e {
        ElfCheck::Truncated(why) => Refusal::malformed(why),
        ElfCheck::Io(e) => io(e),
    })
}

/// Why [`elf_intact_in`] refused.
#[derive(Debug)]
pub(crate) enum ElfCheck {
    Truncated(String),
    Io(std::io::Error),
}

/// [`elf_intact`] on any seekable input of `length` bytes.
pub(crate) fn elf_intact_in<R: std::io::Read + std::io::Seek>(
    input: &mut R,
    length: u64,
) -> Result<(), ElfCheck> {
    use std::io::SeekFrom;
    let io = ElfCheck::Io;
    let mut header = [0u8; 64];
    let mut n = 0;
    while n < header.len() {
        match input.read(&mut header[n..]).map_err(io)? {
            0 => break,
            read => n += read,
        }
    }
    if n < 16 || &header[..4] != b"\x7fELF" {
        return Ok(());
    }
    let truncated = |what: &str, end: u64| {
        ElfCheck::Truncated(format!(
            "truncated: the ELF {what} ends at byte {end} but the file has {length} bytes"
        ))
    };
    let elf = Elf {
        wide: header[4] == 2,
        big: header[5] == 2,
    };
    if n < if elf.wide { 64 } else { 52 } {
        return Err(truncated("header", if elf.wide { 64 } else { 52 }));
    }
    let (phoff, shoff, phentsize, phnum, shentsize, shnum) = if elf.wide {
        (
            elf.u64(&header[32..]),
            elf.u64(&header[40..]),
            elf.u16(&header[54..]),
            elf.u16(&header[56..]),
            elf.u16(&header[58..]),
            elf.u16(&header[60..]),
        )
    } else {
        (
            u64::from(elf.u32(&header[28..])),
            u64::from(elf.u32(&header[32..])),
            elf.u16(&header[42..]),
            elf.u16(&header[44..]),
            elf.u16(&header[46..]),
            elf.u16(&header[48..]),
        )
    };
    let program_end = phoff.saturating_add(u64::from(phentsize) * u64::from(phnum));
    if program_end > length {
        return Err(truncated("program header table", program_end));
    }
    let section_end = shoff.saturating_add(u64::from(shentsize) * u64::from(shnum));
    if shoff != 0 && section_end > length {
        return Err(truncated("section header table", section_end));
    }
    let mut table = vec![0u8; (program_end - phoff) as usize];
    input.seek(SeekFrom::Start(phoff)).map_err(io)?;
    input.read_exact(&mut table).map_err(io)?;
    for entry in table.chunks(usize::from(phentsize.max(1))) {
        const LOAD: u32 = 1;
        if entry.len() < if elf.wide { 40 } else { 20 } || elf.u32(entry) != LOAD {
            continue;
        }
        let (offset, size) = if elf.wide {
            (elf.u64(&entry[8..]), elf.u64(&entry[32..]))
        } else {
            (
                u64::from(elf.u32(&entry[4..])),
                u64::from(elf.u32(&entry[16..])),
            )
        };
        if offset.saturating_add(size) > length {
            return Err(truncated("loadable segment", offset.saturating_add(size)));
        }
    }
    Ok(())
}

/// Reads ELF header fields in the file's own byte order.
struct Elf {
    wide: bool,
    big: bool,
}

impl Elf {
    fn u16(&self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
    fn u64(&self, b: &[u8]) -> u64 {
        let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        }
    }
}

/// A candidate older than the floor (the running version, or the highest ever installed) is
/// refused unless downgrades are allowed.
pub(crate) fn not_a_downgrade(
    candidate: Option<&semver::Version>,
    floor: Option<&semver::Version>,
    allowed: bool,
) -> Result<(), Refusal> {
    match (candidate, floor) {
        (Some(candidate), Some(floor)) if candidate < floor && !allowed => {
            Err(Refusal::Downgrade {
                candidate: candidate.to_string(),
                floor: floor.to_string(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_rules() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert!(checksum(Some(&a), &a, true).is_ok());
        assert!(checksum(None, &a, false).is_ok());
        let err = checksum(Some(&b), &a, false).unwrap_err().to_string();
        assert!(err.contains("does not match the published 0202"), "{err}");
        assert!(checksum(None, &a, true)
            .unwrap_err()
            .to_string()
            .contains("required"));
    }

    #[test]
    fn downgrade_rules() {
        let v = |s| semver::Version::parse(s).unwrap();
        assert!(not_a_downgrade(Some(&v("1.0.0")), Some(&v("1.1.0")), false).is_err());
        assert!(not_a_downgrade(Some(&v("1.0.0")), Some(&v("1.1.0")), true).is_ok());
        assert!(not_a_downgrade(Some(&v("1.1.0")), Some(&v("1.1.0")), false).is_ok());
        assert!(not_a_downgrade(None, Some(&v("1.1.0")), false).is_ok());
    }

    #[test]
    fn a_truncated_elf_is_refused_and_a_whole_one_passes() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole");
        std::fs::write(&whole, &me).unwrap();
        assert!(elf_intact(&whole).is_ok());
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &me[..me.len() - 1]).unwrap();
        let err = elf_intact(&cut).unwrap_err().to_string();
        assert!(err.starts_with("truncated: the ELF"), "{err}");
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert!(elf_intact(&script).is_ok());
    }

    #[test]
    fn unsigned_and_badly_signed_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        std::fs::write(&file, b"x").unwrap();
        let key = vec!["RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3".to_string()];
        assert_eq!(signature(&[], None, &file), Ok(None));
        assert_eq!(
            signature(&key, None, &file).unwrap_err(),
            Refusal::SignatureMissing
        );
        assert!(signature(&key, Some(b"garbage"), &file)
            .unwrap_err()
            .to_string()
            .contains("signature"));
    }
}
