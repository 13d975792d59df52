//! What the object's headers and sidecars claim, read without the network.

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::ChecksumType;
use handover_fetcher::{parse_sha256, Sha256, Version};

/// The object's own SHA-256 when it is the digest of the whole file.
///
/// A multipart upload's SHA-256 is a checksum of the parts' checksums (`<base64>-<parts>`, type
/// `COMPOSITE`); some stores drop the suffix or the type, so a multipart ETag (`"<md5>-<parts>"`)
/// without an explicit `FULL_OBJECT` type is distrusted too.
pub(super) fn full_object_sha256(head: &HeadObjectOutput, etag: &str) -> Option<Sha256> {
    let value = head.checksum_sha256()?;
    let composite = value.contains('-')
        || head.checksum_type() == Some(&ChecksumType::Composite)
        || (is_multipart_etag(etag) && head.checksum_type() != Some(&ChecksumType::FullObject));
    if composite {
        return None;
    }
    decode_sha256(value)
}

pub(crate) fn decode_sha256(base64: &str) -> Option<Sha256> {
    aws_smithy_types::base64::decode(base64.trim())
        .ok()?
        .try_into()
        .ok()
}

pub(crate) fn is_multipart_etag(etag: &str) -> bool {
    etag.trim_matches('"')
        .rsplit_once('-')
        .is_some_and(|(_, parts)| !parts.is_empty() && parts.bytes().all(|b| b.is_ascii_digit()))
}

/// A sidecar of one line, `<hex>  <whatever name it was made under>`.
pub(crate) fn lone_digest(text: &str) -> Option<Sha256> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    parse_sha256(line.split_whitespace().next()?)
}

pub(crate) fn parse_version(text: &str) -> Option<Version> {
    let text = text.trim();
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    Version::parse(text).ok()
}

pub(super) fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags() {
        assert!(is_multipart_etag("\"8b0be7847da5564ae08e97af63b60885-2\""));
        assert!(!is_multipart_etag("\"5d41402abc4b2a76b9719d911017c592\""));
        assert!(!is_multipart_etag("\"abc-\""));
    }

    #[test]
    fn object_checksums() {
        let hello = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        assert_eq!(decode_sha256(hello).unwrap()[..2], [0x2c, 0xf2]);
        assert_eq!(decode_sha256("AAAA"), None);
        let head = |value: &str, kind: Option<ChecksumType>| {
            HeadObjectOutput::builder()
                .checksum_sha256(value)
                .set_checksum_type(kind)
                .build()
        };
        let single = "\"5d41402abc4b2a76b9719d911017c592\"";
        let multi = "\"8b0be7847da5564ae08e97af63b60885-2\"";
        assert!(full_object_sha256(&head(hello, None), single).is_some());
        assert!(full_object_sha256(&head(&format!("{hello}-2"), None), single).is_none());
        assert!(full_object_sha256(&head(hello, Some(ChecksumType::Composite)), single).is_none());
        assert!(full_object_sha256(&head(hello, None), multi).is_none());
        assert!(full_object_sha256(&head(hello, Some(ChecksumType::FullObject)), multi).is_some());
    }

    #[test]
    fn sidecar_formats() {
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(lone_digest(&format!("{hex}\n")).is_some());
        assert!(lone_digest(&format!("{hex}  app-v2.1\n")).is_some());
        assert!(lone_digest(&format!("{hex}  a\n{hex}  b\n")).is_none());
        assert!(lone_digest("nope").is_none());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(parse_version(" 2.0.0-rc.1 ").unwrap().pre.as_str(), "rc.1");
        assert_eq!(parse_version("1.2"), None);
        assert_eq!(
            strip_prefix_ignore_case("X-Amz-Meta-version", "x-amz-meta-"),
            Some("version")
        );
    }
}
