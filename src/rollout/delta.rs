//! Delta updates: a release as a zstd patch from the release before it (what
//! `zstd --patch-from` makes), kept in the store beside the releases, so that a host that runs
//! exactly that previous build downloads the patch instead of the whole binary.
//!
//! The old binary is the patch's reference prefix: zstd finds the parts of the new binary
//! that were already in the old one (long-distance matching over a window that spans both)
//! and encodes only references to them. A patch says nothing about trust: the host checks the
//! full SHA-256 (and the signature) of what it produces, as of a download.
//!
//! ```
//! use handover::rollout::delta;
//!
//! let old = b"version 1.0.0 of a binary".repeat(100);
//! let new = b"version 1.0.1 of a binary".repeat(100);
//! let patch = delta::make_patch(&old, &new).unwrap();
//! assert_eq!(delta::apply_patch(&old, &patch, 1 << 20).unwrap(), new);
//! assert_eq!(
//!     delta::patch_name("ab", "cd"),
//!     "patches/ab/cd.zst"
//! );
//! ```

#[cfg(feature = "delta")]
use zstd::zstd_safe::{self, CParameter, DParameter};

use crate::error::Error;

/// Where patches are kept in the store: `patches/<from sha256>/<to sha256>.zst`.
pub const PATCHES: &str = "patches/";

/// The compression level: the ratio comes from the matches against the old binary, which
/// every level finds; higher levels cost seconds for a few percent of a small patch.
#[cfg(feature = "delta")]
const LEVEL: i32 = 3;

/// The largest window zstd takes (on 64-bit targets): a binary up to 1 GiB can be patched.
#[cfg(feature = "delta")]
const MAX_WINDOW_LOG: u32 = 31;

/// The smallest window zstd takes.
#[cfg(feature = "delta")]
const MIN_WINDOW_LOG: u32 = 10;

/// The name of the patch from the binary with SHA-256 `from` to the one with `to` (hex).
pub fn patch_name(from: &str, to: &str) -> String {
    format!(
        "{PATCHES}{}/{}.zst",
        from.to_ascii_lowercase(),
        to.to_ascii_lowercase()
    )
}

/// The name of the signature of that patch (minisign, over the patch's bytes).
pub fn signature_name(from: &str, to: &str) -> String {
    format!("{}.minisig", patch_name(from, to))
}

/// The minisign signature of `patch` (from the binary with SHA-256 `from` to `to`), which
/// hosts with `upgrade.public_keys` check before applying it.
pub fn sign(
    patch: &[u8],
    key: &minisign::SecretKey,
    from: &str,
    to: &str,
) -> Result<String, Error> {
    let comment = format!("handover delta patch from sha256 {from} to sha256 {to}");
    super::publish::sign_document(patch, key, &comment)
        .map_err(|message| patch_error(&format!("signing {}", patch_name(from, to)), message))
}

/// The window that spans `size` bytes of reference plus output: log2 rounded up, plus one.
#[cfg(feature = "delta")]
fn window_log(size: usize) -> Result<u32, Error> {
    let bits = usize::BITS - size.max(1).leading_zeros();
    let log = (bits + 1).max(MIN_WINDOW_LOG);
    if log > MAX_WINDOW_LOG {
        return Err(patch_error(
            "a patch",
            format!("{size} bytes is more than zstd's window of 2^{MAX_WINDOW_LOG} spans"),
        ));
    }
    Ok(log)
}

fn patch_error(what: &str, message: impl Into<String>) -> Error {
    Error::Patch {
        what: what.to_string(),
        message: message.into(),
    }
}

#[cfg(feature = "delta")]
fn zstd_error(code: usize) -> String {
    zstd_safe::get_error_name(code).to_string()
}

/// A patch that turns `old` into `new`: one zstd frame that references `old` as its prefix
/// (`zstd --patch-from=old new`), with `new`'s size in its header.
#[cfg(feature = "delta")]
pub fn make_patch(old: &[u8], new: &[u8]) -> Result<Vec<u8>, Error> {
    let failed = |code| patch_error("making a patch", zstd_error(code));
    let window = window_log(old.len().max(new.len()))?;
    let mut context = zstd_safe::CCtx::create();
    context
        .set_parameter(CParameter::CompressionLevel(LEVEL))
        .map_err(failed)?;
    context
        .set_parameter(CParameter::WindowLog(window))
        .map_err(failed)?;
    context
        .set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(failed)?;
    context
        .set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(failed)?;
    context
        .set_parameter(CParameter::ChecksumFlag(true))
        .map_err(failed)?;
    context.ref_prefix(old).map_err(failed)?;
    let mut patch = Vec::with_capacity(zstd_safe::compress_bound(new.len()));
    context.compress2(&mut patch, new).map_err(failed)?;
    Ok(patch)
}

/// Applies `patch` to `old`; the result may not exceed `max_size` bytes (the patch declares
/// its size, checked before anything is allocated). A patch made from another base yields
/// other bytes or fails: the caller checks the SHA-256 of the result.
#[cfg(feature = "delta")]
pub fn apply_patch(old: &[u8], patch: &[u8], max_size: u64) -> Result<Vec<u8>, Error> {
    let bad = |message: String| patch_error("applying a patch", message);
    let size = match zstd_safe::get_frame_content_size(patch) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(bad(
                "the patch does not declare the size of its result".into()
            ))
        }
        Err(_) => {
            return Err(bad(format!(
                "{} bytes that are not a zstd frame",
                patch.len()
            )))
        }
    };
    if size > max_size {
        return Err(bad(format!(
            "the patch makes {size} bytes, more than upgrade.max_size ({max_size})"
        )));
    }
    let size = usize::try_from(size).map_err(|_| bad(format!("{size} bytes do not fit here")))?;
    let window = window_log(old.len().max(size))?;
    let failed = |code| bad(zstd_error(code));
    let mut context = zstd_safe::DCtx::create();
    context
        .set_parameter(DParameter::WindowLogMax(window))
        .map_err(failed)?;
    context.ref_prefix(old).map_err(failed)?;
    let mut new = Vec::with_capacity(size);
    let written = context.decompress(&mut new, patch).map_err(failed)?;
    if written != size {
        return Err(bad(format!(
            "the patch declares {size} bytes but made {written}"
        )));
    }
    Ok(new)
}

/// Without the `delta` feature (zstd), no patch can be made.
#[cfg(not(feature = "delta"))]
pub fn make_patch(_old: &[u8], _new: &[u8]) -> Result<Vec<u8>, Error> {
    Err(patch_error("making a patch", NOT_BUILT))
}

/// Without the `delta` feature (zstd), no patch can be applied.
#[cfg(not(feature = "delta"))]
pub fn apply_patch(_old: &[u8], _patch: &[u8], _max_size: u64) -> Result<Vec<u8>, Error> {
    Err(patch_error("applying a patch", NOT_BUILT))
}

#[cfg(not(feature = "delta"))]
const NOT_BUILT: &str = "this handover is built without the `delta` feature (zstd)";

#[cfg(all(test, feature = "delta"))]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Something like two builds: mostly the same bytes, a few changed, some moved.
    fn builds() -> (Vec<u8>, Vec<u8>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let old: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        let mut new = old.clone();
        new[1_000..1_016].copy_from_slice(b"version 1.0.1!!!");
        new.extend_from_slice(&old[10_000..20_000]);
        (old, new)
    }

    #[test]
    fn a_patch_turns_the_old_build_into_the_new_one_and_is_small() {
        let (old, new) = builds();
        let patch = make_patch(&old, &new).unwrap();
        assert!(patch.len() < 2_000, "{} bytes", patch.len());
        assert_eq!(apply_patch(&old, &patch, 1 << 30).unwrap(), new);
        let err = apply_patch(&old, &patch, 1_000).unwrap_err().to_string();
        assert!(err.contains("more than upgrade.max_size (1000)"), "{err}");
    }

    #[test]
    fn a_corrupt_patch_is_an_error() {
        let (old, new) = builds();
        let patch = make_patch(&old, &new).unwrap();
        let err = apply_patch(&old, b"not a patch", 1 << 30).unwrap_err();
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
        let mut flipped = patch.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        assert!(apply_patch(&old, &flipped, 1 << 30).is_err());
        let cut = &patch[..patch.len() - 8];
        assert!(apply_patch(&old, cut, 1 << 30).is_err());
    }

    #[test]
    fn a_patch_from_another_base_does_not_make_the_target() {
        let (old, new) = builds();
        let patch = make_patch(&old, &new).unwrap();
        let mut other = old.clone();
        other[50_000..50_100].fill(0);
        let target: [u8; 32] = Sha256::digest(&new).into();
        // zstd may notice (its frame checksum) or not; the SHA-256 check always does.
        if let Ok(made) = apply_patch(&other, &patch, 1 << 30) {
            assert_ne!(<[u8; 32]>::from(Sha256::digest(&made)), target);
        }
    }

    #[test]
    fn names_are_under_the_prefix() {
        assert_eq!(patch_name("AB", "cd"), "patches/ab/cd.zst");
        assert_eq!(signature_name("ab", "cd"), "patches/ab/cd.zst.minisig");
        assert!(patch_name("a", "b").starts_with(PATCHES));
    }
}
