//! Why the upgrade pipeline did not install a candidate, as facts, and what that means for it.
//!
//! The rule that keeps unattended upgrades from getting stuck: a publication that is not
//! complete or not consistent yet (no checksum or signature yet, one that does not match the
//! bytes) is [`NotReady`](Disposition::NotReady): looked at again at the next poll, at the normal
//! interval. Only bytes proven bad by running them are [quarantined](Disposition::Quarantine).

use std::fmt;

/// What the pipeline does with a candidate after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// The publication is incomplete or inconsistent: look again at the next poll, at the
    /// normal interval, and install it once it is complete.
    NotReady,
    /// These bytes are refused (older, identical, corrupt, quarantined): the same publication
    /// gets the same answer, so the fetcher need not offer it again until it changes.
    Rejected,
    /// These bytes were run and failed: their hash is quarantined (kept in the state file)
    /// until `handover forget` releases it.
    Quarantine,
    /// Something outside the candidate failed (network, disk): retry with back-off.
    Transient,
}

/// Why a candidate was refused. Every variant carries the facts it was decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No SHA-256 was published for the candidate, and `upgrade.checksum_required` asks for one.
    ChecksumMissing,
    /// The published SHA-256 is not that of the bytes.
    ChecksumMismatch {
        /// What the source published (hex).
        published: String,
        /// What the downloaded bytes hash to (hex).
        actual: String,
    },
    /// Public keys are configured and no signature was published.
    SignatureMissing,
    /// The signature does not verify against any configured key.
    SignatureInvalid {
        /// What the verifier said.
        message: String,
    },
    /// Signed metadata is required and the signature's trusted comment carries none.
    MetadataMissing,
    /// The signature's trusted comment starts with `handover` but cannot be read.
    MetadataMalformed {
        /// Which field, and what is wrong with it.
        message: String,
    },
    /// A field of the signed metadata disagrees with the bytes, this machine, the fetcher's
    /// claim or the candidate's own answer.
    MetadataMismatch {
        /// The field (`sha256`, `size`, `target`, `name`, `version`).
        field: &'static str,
        /// What the signature says.
        signed: String,
        /// What was found instead.
        found: String,
        /// Where it was found.
        by: Against,
    },
    /// The release was signed longer ago than `upgrade.max_signature_age`.
    SignatureExpired {
        /// When it was signed (RFC 3339).
        released: String,
        /// `upgrade.max_signature_age`.
        limit: std::time::Duration,
    },
    /// The candidate's version is lower than the floor (the running version, or the highest
    /// ever installed).
    Downgrade {
        /// The candidate's version.
        candidate: String,
        /// The floor it is below.
        floor: String,
    },
    /// The candidate's hash was quarantined after it failed when run.
    Quarantined {
        /// Its SHA-256 (hex).
        sha256: String,
        /// Why it was quarantined.
        reason: String,
    },
    /// The source announced or sent more bytes than `upgrade.max_size`.
    TooLarge {
        /// The size announced or reached, in bytes.
        size: u64,
        /// `upgrade.max_size`.
        limit: u64,
    },
    /// The source sent another number of bytes than it announced.
    SizeMismatch {
        /// Announced.
        announced: u64,
        /// Received (at least).
        received: u64,
    },
    /// The bytes are not a complete program (a truncated ELF file, an archive that cannot be
    /// unpacked, a member missing from it).
    Malformed {
        /// Which check, and what it found.
        message: String,
    },
    /// The candidate's sanity run failed: it was run and did not answer as it must.
    SanityFailed {
        /// What the run did.
        message: String,
    },
    /// The `pre_upgrade` hook said no.
    Vetoed {
        /// What the hook did.
        message: String,
    },
    /// The directory of the live binary (or the watched path) is writable by other users.
    UnsafeDirectory {
        /// Which path, and why.
        message: String,
    },
    /// The new worker ran and failed: not ready in time, exited before it was ready, crashed
    /// in probation. The previous binary was put back.
    RolledBack {
        /// What the worker did.
        reason: String,
    },
    /// Something outside the candidate failed (reading the source, writing the disk, the
    /// master stopping).
    Transient {
        /// What failed.
        message: String,
    },
}

/// What signed metadata was compared with (see [`Refusal::MetadataMismatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Against {
    /// The downloaded (or unpacked) binary: its sha256 and size.
    Binary,
    /// This machine's target triple.
    Machine,
    /// `upgrade.release_name`, by default the live binary's file name.
    ReleaseName,
    /// What the fetcher read from an unsigned place (a release tag, object metadata).
    Fetcher,
    /// What the candidate answered in its sanity run.
    SanityRun,
}

impl fmt::Display for Against {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Binary => "the downloaded binary",
            Self::Machine => "this machine",
            Self::ReleaseName => "upgrade.release_name (default: the live binary's file name)",
            Self::Fetcher => "the fetcher (an unsigned tag or object metadata)",
            Self::SanityRun => "the candidate's sanity run",
        })
    }
}

impl Refusal {
    /// What the pipeline does next with this candidate.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::ChecksumMissing
            | Self::ChecksumMismatch { .. }
            | Self::SignatureMissing
            | Self::SignatureInvalid { .. }
            | Self::SizeMismatch { .. }
            | Self::MetadataMissing
            | Self::MetadataMalformed { .. }
            | Self::Vetoed { .. }
            | Self::UnsafeDirectory { .. } => Disposition::NotReady,
            // A release for another machine stays one; anything else a re-signed publication
            // can put right.
            Self::MetadataMismatch { field, .. } if *field == "target" => Disposition::Rejected,
            Self::MetadataMismatch { .. } => Disposition::NotReady,
            Self::Downgrade { .. }
            | Self::SignatureExpired { .. }
            | Self::Quarantined { .. }
            | Self::TooLarge { .. }
            | Self::Malformed { .. } => Disposition::Rejected,
            Self::SanityFailed { .. } | Self::RolledBack { .. } => Disposition::Quarantine,
            Self::Transient { .. } => Disposition::Transient,
        }
    }

    pub(crate) fn transient(message: impl fmt::Display) -> Self {
        Self::Transient {
            message: message.to_string(),
        }
    }

    pub(crate) fn sanity(message: impl fmt::Display) -> Self {
        Self::SanityFailed {
            message: message.to_string(),
        }
    }

    pub(crate) fn vetoed(message: impl fmt::Display) -> Self {
        Self::Vetoed {
            message: message.to_string(),
        }
    }

    pub(crate) fn malformed(message: impl fmt::Display) -> Self {
        Self::Malformed {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |hex: &str| hex[..hex.len().min(12)].to_string();
        match self {
            Self::ChecksumMissing => f.write_str(
                "no SHA-256 is published for it yet (upgrade.checksum_required); waiting for the checksum",
            ),
            Self::ChecksumMismatch { published, actual } => write!(
                f,
                "sha256 {} does not match the published {}; waiting for a consistent publication",
                short(actual),
                short(published)
            ),
            Self::SignatureMissing => f.write_str(
                "no signature is published for it yet (upgrade.public_keys is set); waiting for the .minisig",
            ),
            Self::SignatureInvalid { message } => write!(f, "signature: {message}"),
            Self::MetadataMissing => f.write_str(
                "its signature carries no handover metadata (sign it with `handover sign`, or set upgrade.require_signed_metadata = false); waiting for a signature with metadata",
            ),
            Self::MetadataMalformed { message } => write!(f, "signed metadata: {message}"),
            Self::MetadataMismatch {
                field,
                signed,
                found,
                by,
            } => write!(
                f,
                "signed metadata says {field}={signed} but {by} says {field}={found}"
            ),
            Self::SignatureExpired { released, limit } => write!(
                f,
                "signed at {released}, longer ago than upgrade.max_signature_age ({}): a stale release",
                humantime::format_duration(*limit)
            ),
            Self::Downgrade { candidate, floor } => write!(
                f,
                "version {candidate} is older than {floor} (set upgrade.allow_downgrade to allow)"
            ),
            Self::Quarantined { sha256, reason } => write!(
                f,
                "sha256 {} is quarantined ({reason}); `handover forget {}` releases it",
                short(sha256),
                short(sha256)
            ),
            Self::TooLarge { size, limit } => write!(
                f,
                "{size} bytes is more than upgrade.max_size ({limit} bytes)"
            ),
            Self::SizeMismatch {
                announced,
                received,
            } => write!(
                f,
                "truncated or padded: {received} bytes received, {announced} announced"
            ),
            Self::Malformed { message } => f.write_str(message),
            Self::SanityFailed { message } => write!(f, "sanity run failed: {message}"),
            Self::Vetoed { message } => write!(f, "pre_upgrade hook: {message}"),
            Self::UnsafeDirectory { message } => f.write_str(message),
            Self::RolledBack { reason } => write!(f, "rolled back: {reason}"),
            Self::Transient { message } => f.write_str(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_run_is_quarantined_and_an_incomplete_publication_is_waited_for() {
        let not_ready = [
            Refusal::ChecksumMissing,
            Refusal::ChecksumMismatch {
                published: "ab".repeat(32),
                actual: "cd".repeat(32),
            },
            Refusal::SignatureMissing,
            Refusal::SignatureInvalid {
                message: "bad signature".into(),
            },
            Refusal::SizeMismatch {
                announced: 10,
                received: 4,
            },
        ];
        for refusal in &not_ready {
            assert_eq!(refusal.disposition(), Disposition::NotReady, "{refusal}");
        }
        for refusal in [
            Refusal::sanity("exit code 3"),
            Refusal::RolledBack {
                reason: "crashed".into(),
            },
        ] {
            assert_eq!(refusal.disposition(), Disposition::Quarantine, "{refusal}");
        }
        let downgrade = Refusal::Downgrade {
            candidate: "1.0.0".into(),
            floor: "1.2.0".into(),
        };
        assert_eq!(downgrade.disposition(), Disposition::Rejected);
        assert_eq!(
            downgrade.to_string(),
            "version 1.0.0 is older than 1.2.0 (set upgrade.allow_downgrade to allow)"
        );
        assert!(not_ready[1]
            .to_string()
            .contains("sha256 cdcdcdcdcdcd does not match the published abababababab"));
    }
}
