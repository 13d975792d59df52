//! Signed release metadata: what a publisher's minisign signature says about a release.
//!
//! A minisign signature has a *trusted comment*, covered by the signature like the bytes are.
//! handover puts the facts an upgrade decision rests on there, in one line of `key=value`
//! words after the word `handover`:
//!
//! ```text
//! handover version=1.4.2 target=x86_64-unknown-linux-gnu name=app size=12345678 sha256=9f86…08 released=2026-12-01T10:00:00Z
//! ```
//!
//! | key | what it binds |
//! |---|---|
//! | `version` | the release's semver version: the one downgrade protection uses |
//! | `target` | the target triple it was built for; must be this machine's |
//! | `name` | the program it is ([`UpgradeConfig::release_name`](crate::UpgradeConfig::release_name), by default the live binary's file name): one key signing several programs cannot have one installed as another |
//! | `size`, `sha256` | the binary's length and SHA-256 (for an archive, of the binary in it) |
//! | `released` | when it was signed (RFC 3339, UTC): [`max_signature_age`](crate::UpgradeConfig::max_signature_age) refuses stale ones |
//!
//! Every key is required; keys this version does not know are ignored, so later versions can
//! add some. `handover sign` writes this line from the binary itself.
//!
//! ```
//! use handover::release::ReleaseMetadata;
//!
//! let line = format!(
//!     "handover version=1.4.2 target=x86_64-unknown-linux-gnu name=app size=3 sha256={} released=2026-12-01T10:00:00Z",
//!     "ab".repeat(32)
//! );
//! let metadata = ReleaseMetadata::parse(&line).unwrap().expect("a handover comment");
//! assert_eq!(metadata.version.to_string(), "1.4.2");
//! assert_eq!(metadata.to_comment(), line);
//! // minisign's own default comment is no handover metadata:
//! assert!(ReleaseMetadata::parse("timestamp:1764583200\tfile:app").unwrap().is_none());
//! ```

use std::time::SystemTime;

/// The first word of a trusted comment that holds handover metadata.
pub const PREFIX: &str = "handover";

/// The facts a release's signature binds (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseMetadata {
    /// The release's version.
    pub version: semver::Version,
    /// The target triple it was built for.
    pub target: String,
    /// The program it is.
    pub name: String,
    /// The binary's length in bytes.
    pub size: u64,
    /// The binary's SHA-256.
    pub sha256: [u8; 32],
    /// When it was signed.
    pub released: SystemTime,
}

/// Why a trusted comment that starts with `handover` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signed metadata: {0}")]
pub struct MalformedMetadata(pub String);

impl ReleaseMetadata {
    /// Metadata for a release.
    pub fn new(
        version: semver::Version,
        target: impl Into<String>,
        name: impl Into<String>,
        size: u64,
        sha256: [u8; 32],
        released: SystemTime,
    ) -> Self {
        Self {
            version,
            target: target.into(),
            name: name.into(),
            size,
            sha256,
            released,
        }
    }

    /// Reads a trusted comment: `Ok(None)` when it is not handover metadata (it does not start
    /// with the word `handover`), an error naming the field when it is and something is wrong.
    pub fn parse(comment: &str) -> Result<Option<Self>, MalformedMetadata> {
        let mut words = comment.split_ascii_whitespace();
        if words.next() != Some(PREFIX) {
            return Ok(None);
        }
        let bad = |message: String| MalformedMetadata(message);
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| bad(format!("{word:?} is not key=value")))?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!("{key} is given twice")));
            }
            fields.push((key, value));
        }
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad(format!("{key} is missing")))
        };
        let version = semver::Version::parse(field("version")?)
            .map_err(|e| bad(format!("version {:?}: {e}", field("version").unwrap_or(""))))?;
        let size = field("size")?;
        let size = size
            .parse()
            .map_err(|_| bad(format!("size {size:?} is not a number of bytes")))?;
        let digest = field("sha256")?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(digest, &mut sha256)
            .map_err(|_| bad(format!("sha256 {digest:?} is not 64 hex digits")))?;
        let released = field("released")?;
        let released = humantime::parse_rfc3339(released).map_err(|e| {
            bad(format!(
                "released {released:?}: {e} (want 2026-12-01T10:00:00Z)"
            ))
        })?;
        Ok(Some(Self {
            version,
            target: field("target")?.to_string(),
            name: field("name")?.to_string(),
            size,
            sha256,
            released,
        }))
    }

    /// The trusted comment that carries this metadata.
    pub fn to_comment(&self) -> String {
        format!(
            "{PREFIX} version={} target={} name={} size={} sha256={} released={}",
            self.version,
            self.target,
            self.name,
            self.size,
            hex::encode(self.sha256),
            humantime::format_rfc3339_seconds(self.released)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(overrides: &[(&str, &str)]) -> String {
        let mut fields = vec![
            ("version", "1.4.2".to_string()),
            ("target", "x86_64-unknown-linux-gnu".into()),
            ("name", "app".into()),
            ("size", "12".into()),
            ("sha256", "cd".repeat(32)),
            ("released", "2026-12-01T10:00:00Z".into()),
        ];
        for (key, value) in overrides {
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some(field) => field.1 = value.to_string(),
                None => fields.push((key, value.to_string())),
            }
        }
        let words: Vec<String> = fields
            .iter()
            .filter(|(_, v)| v != "<none>")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("handover {}", words.join(" "))
    }

    #[test]
    fn round_trips_and_ignores_unknown_keys() {
        let parsed = ReleaseMetadata::parse(&line(&[])).unwrap().unwrap();
        assert_eq!(parsed.size, 12);
        assert_eq!(parsed.sha256, [0xcd; 32]);
        assert_eq!(parsed.to_comment(), line(&[]));
        let later = ReleaseMetadata::parse(&line(&[("channel", "beta")]))
            .unwrap()
            .unwrap();
        assert_eq!(later, parsed);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (overrides, expect) in [
            (vec![("version", "<none>")], "version is missing"),
            (vec![("version", "1.4")], "version \"1.4\""),
            (vec![("size", "12k")], "size \"12k\" is not a number"),
            (vec![("sha256", "abc")], "sha256 \"abc\" is not 64 hex"),
            (vec![("released", "yesterday")], "released \"yesterday\""),
            (vec![("target", "")], "target is missing"),
            (vec![("name", "<none>")], "name is missing"),
        ] {
            let err = ReleaseMetadata::parse(&line(&overrides)).unwrap_err();
            assert!(err.to_string().contains(expect), "{err} / {expect}");
        }
        let twice = format!("{} version=9.9.9", line(&[]));
        assert!(ReleaseMetadata::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("version is given twice"));
        assert!(ReleaseMetadata::parse("handover version")
            .unwrap_err()
            .to_string()
            .contains("not key=value"));
    }

    #[test]
    fn other_comments_are_no_metadata() {
        for comment in ["", "timestamp:1\tfile:app", "handoverish version=1.0.0"] {
            assert_eq!(ReleaseMetadata::parse(comment).unwrap(), None, "{comment}");
        }
    }
}
