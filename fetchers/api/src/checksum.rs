//! Published SHA-256 digests: a hex digest, and the entry for one file in a checksum file.

use crate::Sha256;

/// Parses a SHA-256 written as 64 hex digits (optionally prefixed `sha256:`).
pub fn parse_sha256(text: &str) -> Option<Sha256> {
    let text = text.trim();
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Finds the SHA-256 of `file_name` in a checksum file (`SHA256SUMS`, `checksums.txt`,
/// `<asset>.sha256`): lines of `<hex>  <name>` or `<hex> *<name>`, or a lone `<hex>`.
pub fn find_in_checksum_file(contents: &str, file_name: &str) -> Option<Sha256> {
    let mut lone = None;
    let mut lines = 0;
    for line in contents
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        lines += 1;
        let mut parts = line.split_whitespace();
        let digest = parts.next()?;
        match parts.next() {
            Some(name) => {
                let name = name.trim_start_matches('*');
                let base = name.rsplit('/').next().unwrap_or(name);
                if name == file_name || base == file_name {
                    return parse_sha256(digest);
                }
            }
            None => lone = parse_sha256(digest),
        }
    }
    if lines == 1 {
        lone
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3fa1c0ffee3fa1c0ffee3fa1c0ffee3fa1c0ffee3fa1c0ffee3fa1c0ffee3fa1";

    #[test]
    fn parses_digest_with_and_without_prefix() {
        let d = parse_sha256(A).unwrap();
        assert_eq!(d[0], 0x3f);
        assert_eq!(parse_sha256(&format!("sha256:{A}")), Some(d));
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&A.replace('a', "g")), None);
    }

    #[test]
    fn checksum_file_formats() {
        let sums = format!("{}  other\n{A} *app-linux\n", "0".repeat(64));
        assert_eq!(find_in_checksum_file(&sums, "app-linux"), parse_sha256(A));
        assert_eq!(find_in_checksum_file(&sums, "missing"), None);
        assert_eq!(
            find_in_checksum_file(&format!("{A}\n"), "anything"),
            parse_sha256(A)
        );
        assert_eq!(
            find_in_checksum_file(&format!("{A}  dist/app\n"), "app"),
            parse_sha256(A)
        );
        assert_eq!(find_in_checksum_file("not a checksum\n", "app"), None);
    }
}
