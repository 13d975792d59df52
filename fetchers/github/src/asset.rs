//! Which asset of a release is the binary for this target, and which ones vouch for it.

use handover_fetcher::{ArchiveFormat, Version};

use crate::release::{is_uploaded, Asset, Release};

/// Extensions tried after the `asset` template's expansion, in order of preference.
const EXTENSIONS: [&str; 5] = ["", ".gz", ".tar.gz", ".tgz", ".zip"];

/// Values for the placeholders of asset and binary names.
#[derive(Debug, Clone)]
pub(crate) struct Vars<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a Version,
    pub(crate) tag: &'a str,
    pub(crate) target: &'a str,
}

impl Vars<'_> {
    /// Replaces `{name}`, `{version}`, `{tag}`, `{target}`, `{os}` and `{arch}`.
    pub(crate) fn expand(&self, template: &str) -> String {
        let (os, arch) = os_arch(self.target);
        template
            .replace("{name}", self.name)
            .replace("{version}", &self.version.to_string())
            .replace("{tag}", self.tag)
            .replace("{target}", self.target)
            .replace("{os}", os)
            .replace("{arch}", arch)
    }
}

/// The operating system and architecture a target triple names, spelled as Rust's
/// `std::env::consts` spells them (`linux`, `macos`, `windows`; `x86_64`, `aarch64`).
pub(crate) fn os_arch(target: &str) -> (&str, &str) {
    let mut parts = target.split('-');
    let arch = parts.next().unwrap_or(target);
    let os = [
        ("android", "android"),
        ("linux", "linux"),
        ("darwin", "macos"),
        ("windows", "windows"),
        ("freebsd", "freebsd"),
        ("netbsd", "netbsd"),
        ("openbsd", "openbsd"),
        ("dragonfly", "dragonfly"),
        ("illumos", "illumos"),
        ("solaris", "solaris"),
    ]
    .into_iter()
    .find(|(word, _)| target.contains(word))
    .map(|(_, os)| os)
    .unwrap_or_else(|| parts.nth(1).unwrap_or(""));
    (os, arch)
}

/// Whether `text` matches `pattern`: `*` any run of characters, `?` exactly one.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Checksum lists and signatures: never the binary.
pub(crate) fn is_auxiliary(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    is_checksum_list(&lower)
        || [
            ".sha256",
            ".sha256sum",
            ".sha512",
            ".minisig",
            ".sig",
            ".asc",
            ".pem",
            ".sbom",
            ".intoto.jsonl",
        ]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

fn is_checksum_list(lower: &str) -> bool {
    matches!(
        lower,
        "sha256sums" | "sha256sums.txt" | "checksums.txt" | "checksums.sha256"
    ) || lower.ends_with("_checksums.txt")
        || lower.ends_with("-checksums.txt")
        || lower.ends_with("_sha256sums.txt")
}

/// Why no asset was chosen; the message names the release tag, what was expected, and what is
/// there.
#[derive(Debug)]
pub(crate) enum NoAsset {
    /// The release has no (completely uploaded) asset for this machine: yet, perhaps.
    Missing(String),
    /// `asset_pattern` matches several assets.
    Ambiguous(String),
}

/// The asset to download and how it is packed (`None`: the binary itself), or why there is
/// none.
pub(crate) fn select<'r>(
    release: &'r Release,
    template: &str,
    pattern: Option<&str>,
    vars: &Vars<'_>,
) -> Result<(&'r Asset, Option<ArchiveFormat>), NoAsset> {
    let ready = || release.assets.iter().filter(|a| is_uploaded(a));
    let present = || {
        let names: Vec<&str> = release.assets.iter().map(|a| a.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let chosen = if let Some(pattern) = pattern {
        let pattern = vars.expand(pattern);
        let matching: Vec<&Asset> = ready()
            .filter(|a| !is_auxiliary(&a.name) && glob(&pattern, &a.name))
            .collect();
        match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(NoAsset::Missing(format!(
                    "release {} has no asset matching {pattern:?}; assets: {}",
                    release.tag_name,
                    present()
                )))
            }
            several => {
                let names: Vec<&str> = several.iter().map(|a| a.name.as_str()).collect();
                return Err(NoAsset::Ambiguous(format!(
                    "release {}: asset_pattern {pattern:?} matches several assets ({}); make it \
                     match one",
                    release.tag_name,
                    names.join(", ")
                )));
            }
        }
    } else {
        let expected = vars.expand(template);
        let found = EXTENSIONS.iter().find_map(|ext| {
            let name = format!("{expected}{ext}");
            ready().find(|a| a.name == name)
        });
        match found {
            Some(asset) => asset,
            None => {
                return Err(NoAsset::Missing(format!(
                    "release {} has no asset {expected:?} (nor with .gz, .tar.gz, .tgz or .zip \
                     after it); assets: {}",
                    release.tag_name,
                    present()
                )))
            }
        }
    };
    Ok((chosen, ArchiveFormat::from_name(&chosen.name)))
}

/// Assets that may hold `asset`'s SHA-256, best first: `<asset>.sha256`, then checksum lists.
pub(crate) fn checksum_assets<'r>(release: &'r Release, asset: &str) -> Vec<&'r Asset> {
    let own = format!("{asset}.sha256");
    let mut found: Vec<&Asset> = release
        .assets
        .iter()
        .filter(|a| is_uploaded(a) && a.name == own)
        .collect();
    found.extend(
        release
            .assets
            .iter()
            .filter(|a| is_uploaded(a) && is_checksum_list(&a.name.to_ascii_lowercase())),
    );
    found
}

/// The minisign signature of what the core will verify: `<asset>.minisig` for a raw binary;
/// for an archive, the signature of the binary inside, `<asset without extension>.minisig`
/// (the core verifies the signature after taking the binary out).
pub(crate) fn signature_asset<'r>(
    release: &'r Release,
    asset: &str,
    format: Option<ArchiveFormat>,
) -> Option<&'r Asset> {
    let name = match format {
        Some(_) => format!("{}.minisig", ArchiveFormat::split(asset).0),
        None => format!("{asset}.minisig"),
    };
    release
        .assets
        .iter()
        .find(|a| is_uploaded(a) && a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(names: &[&str]) -> Release {
        crate::release::tests::fixture("v1.2.3", false, false, names)
    }

    static VERSION: Version = Version::new(1, 2, 3);

    fn vars(target: &str) -> Vars<'_> {
        Vars {
            name: "app",
            version: &VERSION,
            tag: "v1.2.3",
            target,
        }
    }

    #[test]
    fn placeholders() {
        let v = vars("x86_64-unknown-linux-gnu");
        assert_eq!(
            v.expand("{name}-{version}-{tag}-{target}-{os}-{arch}"),
            "app-1.2.3-v1.2.3-x86_64-unknown-linux-gnu-linux-x86_64"
        );
        assert_eq!(os_arch("aarch64-apple-darwin"), ("macos", "aarch64"));
        assert_eq!(os_arch("x86_64-pc-windows-msvc"), ("windows", "x86_64"));
        assert_eq!(os_arch("aarch64-linux-android"), ("android", "aarch64"));
        assert_eq!(os_arch("riscv64gc-unknown-none-elf"), ("none", "riscv64gc"));
    }

    #[test]
    fn globs() {
        assert!(glob("app-*-linux.tar.gz", "app-1.2.3-linux.tar.gz"));
        assert!(glob("*", ""));
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("app-*.zip", "app-1.tar.gz"));
        assert!(glob("*a*b*", "xxaxxbxx"));
    }

    #[test]
    fn prefers_the_raw_binary_then_archives() {
        let target = "x86_64-unknown-linux-gnu";
        let r = release(&[
            "app-x86_64-unknown-linux-gnu.tar.gz",
            "app-x86_64-unknown-linux-gnu",
            "SHA256SUMS",
        ]);
        let (a, format) = select(&r, "{name}-{target}", None, &vars(target)).unwrap();
        assert_eq!(
            (a.name.as_str(), format),
            ("app-x86_64-unknown-linux-gnu", None)
        );
        let r = release(&["app-x86_64-unknown-linux-gnu.tgz"]);
        let (_, format) = select(&r, "{name}-{target}", None, &vars(target)).unwrap();
        assert_eq!(format, Some(ArchiveFormat::TarGz));
    }

    #[test]
    fn missing_asset_names_tag_expectation_and_assets() {
        let r = release(&["app-aarch64-apple-darwin", "SHA256SUMS"]);
        let NoAsset::Missing(err) = select(
            &r,
            "{name}-{target}",
            None,
            &vars("x86_64-unknown-linux-gnu"),
        )
        .unwrap_err() else {
            panic!("not missing")
        };
        assert!(err.contains("v1.2.3"), "{err}");
        assert!(err.contains("\"app-x86_64-unknown-linux-gnu\""), "{err}");
        assert!(
            err.contains("app-aarch64-apple-darwin, SHA256SUMS"),
            "{err}"
        );
    }

    #[test]
    fn patterns_must_match_one_binary() {
        let r = release(&[
            "app-1.2.3-x86_64-linux.zip",
            "app-1.2.3-x86_64-linux.zip.sha256",
            "app-1.2.3-aarch64-linux.zip",
        ]);
        let (a, format) = select(
            &r,
            "",
            Some("{name}-{version}-{arch}-*"),
            &vars("x86_64-unknown-linux-gnu"),
        )
        .unwrap();
        assert_eq!(
            (a.name.as_str(), format),
            ("app-1.2.3-x86_64-linux.zip", Some(ArchiveFormat::Zip))
        );
        let err = select(&r, "", Some("app-*"), &vars("x86_64-unknown-linux-gnu")).unwrap_err();
        assert!(
            matches!(&err, NoAsset::Ambiguous(m) if m.contains("matches several")),
            "{err:?}"
        );
        let err = select(&r, "", Some("nope-*"), &vars("x86_64-unknown-linux-gnu")).unwrap_err();
        assert!(matches!(err, NoAsset::Missing(_)), "{err:?}");
    }

    #[test]
    fn checksum_and_signature_assets() {
        let r = release(&[
            "checksums.txt",
            "app.tar.gz",
            "app.tar.gz.sha256",
            "app.tar.gz.minisig",
            "app.minisig",
            "bin",
            "bin.minisig",
        ]);
        let names: Vec<&str> = checksum_assets(&r, "app.tar.gz")
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["app.tar.gz.sha256", "checksums.txt"]);
        assert_eq!(
            signature_asset(&r, "app.tar.gz", Some(ArchiveFormat::TarGz))
                .unwrap()
                .name,
            "app.minisig"
        );
        assert_eq!(
            signature_asset(&r, "bin", None).unwrap().name,
            "bin.minisig"
        );
    }
}
