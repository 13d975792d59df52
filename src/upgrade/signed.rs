//! Checks of a candidate's [signed release metadata](crate::release) against everything else
//! the decision rests on: the bytes, this machine, the fetcher's claims, the configured name,
//! the release's age, and what the candidate answers when run.
//!
//! Only a signed version ever becomes the floor below which nothing is installed: a claim the
//! fetcher read from unsigned places (a tag, object metadata) may make a candidate look older
//! and be refused early, but never lifts the floor (an attacker who can write the bucket but
//! not sign could otherwise lock every real fix out with `version=99.0.0`).

use std::time::{Duration, SystemTime};

use crate::config::UpgradeConfig;
use crate::refusal::{Against, Refusal};
use crate::release::ReleaseMetadata;

/// What the candidate's metadata is compared with.
pub(super) struct Expected<'a> {
    pub(super) size: u64,
    pub(super) sha256: &'a [u8; 32],
    pub(super) target: &'a str,
    pub(super) name: &'a str,
    /// The version the fetcher read from an unsigned place, if any.
    pub(super) claimed_version: Option<&'a semver::Version>,
    pub(super) now: SystemTime,
}

/// Reads the metadata from a verified signature's trusted comment (`None`: no public keys,
/// so nothing was verified). Missing metadata is refused when it is required, or when
/// `max_signature_age` needs the signed release time.
pub(super) fn read(
    config: &UpgradeConfig,
    trusted_comment: Option<&str>,
) -> Result<Option<ReleaseMetadata>, Refusal> {
    let Some(comment) = trusted_comment else {
        return Ok(None);
    };
    match ReleaseMetadata::parse(comment) {
        Ok(Some(metadata)) => Ok(Some(metadata)),
        Ok(None) if config.signed_metadata_required() || config.max_signature_age.is_some() => {
            Err(Refusal::MetadataMissing)
        }
        Ok(None) => Ok(None),
        Err(e) => Err(Refusal::MetadataMalformed { message: e.0 }),
    }
}

/// The metadata must describe these bytes, this machine and this program, agree with the
/// fetcher's claim, and be recent enough.
pub(super) fn check(
    metadata: &ReleaseMetadata,
    expected: &Expected<'_>,
    max_age: Option<Duration>,
) -> Result<(), Refusal> {
    let mismatch = |field: &'static str, signed: String, found: String, by: Against| {
        Err(Refusal::MetadataMismatch {
            field,
            signed,
            found,
            by,
        })
    };
    if metadata.sha256 != *expected.sha256 {
        return mismatch(
            "sha256",
            hex::encode(metadata.sha256),
            hex::encode(expected.sha256),
            Against::Binary,
        );
    }
    if metadata.size != expected.size {
        return mismatch(
            "size",
            metadata.size.to_string(),
            expected.size.to_string(),
            Against::Binary,
        );
    }
    if metadata.target != expected.target {
        return mismatch(
            "target",
            metadata.target.clone(),
            expected.target.into(),
            Against::Machine,
        );
    }
    if metadata.name != expected.name {
        return mismatch(
            "name",
            metadata.name.clone(),
            expected.name.into(),
            Against::ReleaseName,
        );
    }
    if let Some(claimed) = expected.claimed_version {
        if *claimed != metadata.version {
            return mismatch(
                "version",
                metadata.version.to_string(),
                claimed.to_string(),
                Against::Fetcher,
            );
        }
    }
    if let Some(limit) = max_age {
        if expected
            .now
            .duration_since(metadata.released)
            .is_ok_and(|age| age > limit)
        {
            return Err(Refusal::SignatureExpired {
                released: humantime::format_rfc3339_seconds(metadata.released).to_string(),
                limit,
            });
        }
    }
    Ok(())
}

/// What the candidate said about itself in the sanity run must be what was signed.
pub(super) fn check_answer(
    metadata: &ReleaseMetadata,
    answered_version: Option<&str>,
) -> Result<(), Refusal> {
    match answered_version {
        Some(answered)
            if semver::Version::parse(answered).ok().as_ref() != Some(&metadata.version) =>
        {
            Err(Refusal::MetadataMismatch {
                field: "version",
                signed: metadata.version.to_string(),
                found: answered.into(),
                by: Against::SanityRun,
            })
        }
        _ => Ok(()),
    }
}

/// A status warning when the newest release seen was signed longer ago than `max_age`.
pub(crate) fn staleness(
    newest: Option<(&str, SystemTime)>,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Option<String> {
    let (limit, (version, released)) = (max_age?, newest?);
    let age = now.duration_since(released).ok()?;
    (age > limit).then(|| {
        format!(
            "the newest release seen ({version}) was signed {} ago, longer than upgrade.max_signature_age ({}): is the release source stale?",
            in_days(age),
            humantime::format_duration(limit)
        )
    })
}

/// `40 days`, or hours and minutes below two days.
fn in_days(age: Duration) -> String {
    const DAY: u64 = 86_400;
    match age.as_secs() {
        s if s >= 2 * DAY => format!("{} days", s / DAY),
        s => humantime::format_duration(Duration::from_secs(s / 60 * 60)).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn metadata() -> ReleaseMetadata {
        ReleaseMetadata::new(
            semver::Version::new(1, 4, 2),
            "x86_64-unknown-linux-gnu",
            "app",
            12,
            [7; 32],
            SystemTime::UNIX_EPOCH + 100 * DAY,
        )
    }

    fn expected(now_days: u32) -> Expected<'static> {
        Expected {
            size: 12,
            sha256: &[7; 32],
            target: "x86_64-unknown-linux-gnu",
            name: "app",
            claimed_version: None,
            now: SystemTime::UNIX_EPOCH + DAY * now_days,
        }
    }

    fn field_of(result: Result<(), Refusal>) -> &'static str {
        match result.unwrap_err() {
            Refusal::MetadataMismatch { field, .. } => field,
            other => panic!("not a mismatch: {other}"),
        }
    }

    #[test]
    fn every_field_is_compared() {
        let m = metadata();
        assert_eq!(check(&m, &expected(101), None), Ok(()));
        let cases: [(&str, Expected<'static>); 5] = [
            (
                "sha256",
                Expected {
                    sha256: &[8; 32],
                    ..expected(101)
                },
            ),
            (
                "size",
                Expected {
                    size: 13,
                    ..expected(101)
                },
            ),
            (
                "target",
                Expected {
                    target: "aarch64-unknown-linux-gnu",
                    ..expected(101)
                },
            ),
            (
                "name",
                Expected {
                    name: "other",
                    ..expected(101)
                },
            ),
            (
                "version",
                Expected {
                    claimed_version: Some(Box::leak(Box::new(semver::Version::new(99, 0, 0)))),
                    ..expected(101)
                },
            ),
        ];
        for (field, expected) in cases {
            assert_eq!(field_of(check(&m, &expected, None)), field);
        }
        let target = check(
            &m,
            &Expected {
                target: "aarch64-unknown-linux-gnu",
                ..expected(101)
            },
            None,
        )
        .unwrap_err();
        assert_eq!(target.disposition(), crate::refusal::Disposition::Rejected);
        assert!(target.to_string().contains("signed metadata says target=x86_64-unknown-linux-gnu but this machine says target=aarch64"), "{target}");
        assert_eq!(field_of(check_answer(&m, Some("1.4.3"))), "version");
        assert_eq!(check_answer(&m, Some("1.4.2")), Ok(()));
        assert_eq!(check_answer(&m, None), Ok(()));
    }

    #[test]
    fn age_is_bounded_when_asked() {
        let m = metadata();
        assert_eq!(check(&m, &expected(129), Some(30 * DAY)), Ok(()));
        assert!(matches!(
            check(&m, &expected(131), Some(30 * DAY)),
            Err(Refusal::SignatureExpired { .. })
        ));
        assert_eq!(check(&m, &expected(1000), None), Ok(()));
        let now = SystemTime::UNIX_EPOCH + 131 * DAY;
        let warning = staleness(Some(("1.4.2", m.released)), Some(30 * DAY), now).unwrap();
        assert!(
            warning.contains("(1.4.2) was signed 31 days ago"),
            "{warning}"
        );
        assert_eq!(
            staleness(Some(("1.4.2", m.released)), Some(40 * DAY), now),
            None
        );
        assert_eq!(staleness(None, Some(DAY), now), None);
    }

    #[test]
    fn missing_metadata_is_refused_only_when_required() {
        let mut config = UpgradeConfig {
            public_keys: vec!["k".into()],
            ..UpgradeConfig::default()
        };
        assert_eq!(read(&config, None), Ok(None));
        assert_eq!(
            read(&config, Some("timestamp:1")),
            Err(Refusal::MetadataMissing)
        );
        config.require_signed_metadata = Some(false);
        assert_eq!(read(&config, Some("timestamp:1")), Ok(None));
        config.max_signature_age = Some(DAY);
        assert_eq!(
            read(&config, Some("timestamp:1")),
            Err(Refusal::MetadataMissing)
        );
        assert!(matches!(
            read(&config, Some("handover version=x")),
            Err(Refusal::MetadataMalformed { .. })
        ));
        let line = metadata().to_comment();
        assert_eq!(read(&config, Some(&line)), Ok(Some(metadata())));
    }
}
