//! Signing a release with its [metadata](crate::release): what `handover sign` does.
//!
//! The metadata is taken from the binary itself: its size and SHA-256, and, for a program
//! built on handover, the version and target it answers in check mode (the same question the
//! upgrade's sanity run asks). A program that does not answer (one run under `handover run`)
//! is described by the publisher: [`Describe::version`] and [`Describe::target`].
//!
//! The key is minisign's format (`minisign -G`); the signature written is minisign's too, so
//! `minisign -V -p release.pub -m FILE` verifies it.
//!
//! ```no_run
//! # async fn example() -> Result<(), handover::Error> {
//! use handover::sign::{read_secret_key, Describe};
//! use std::path::Path;
//!
//! let binary = Path::new("target/release/app");
//! let metadata = Describe::new(binary).describe().await?;
//! let key = read_secret_key(Path::new("release.key"), None)?;
//! let signature = handover::sign::sign(binary, &metadata, &key, None)?;
//! std::fs::write("target/release/app.minisig", signature).unwrap();
//! # Ok(()) }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::release::ReleaseMetadata;

/// What to put in a release's metadata, beyond what is read off the binary.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Describe {
    /// The binary to describe.
    pub binary: PathBuf,
    /// `name=`; default: the binary's file name.
    pub name: Option<String>,
    /// `version=`; default: the binary's answer in check mode. Given, the binary is not run.
    pub version: Option<semver::Version>,
    /// `target=`; default: the binary's answer, or, when it is not run, this machine's
    /// target if the binary is an ELF file for this machine's architecture.
    pub target: Option<String>,
    /// `released=`; default: now.
    pub released: Option<SystemTime>,
    /// How long the check-mode run may take.
    pub timeout: Duration,
}

impl Describe {
    /// Describes `binary` from itself.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            name: None,
            version: None,
            target: None,
            released: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// The release's metadata.
    pub async fn describe(&self) -> Result<ReleaseMetadata, Error> {
        let binary = &self.binary;
        let (size, sha256) = measure(binary)?;
        let name = match &self.name {
            Some(name) => name.clone(),
            None => binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| failed(binary, "has no file name; pass --name"))?,
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(failed(binary, format!("name {name:?} must be one word")));
        }
        let (version, target) = match &self.version {
            Some(version) => {
                let target = match &self.target {
                    Some(target) => target.clone(),
                    None => native_target(binary)?,
                };
                (version.clone(), target)
            }
            None => {
                let reply = crate::upgrade::check_candidate(binary, self.timeout)
                    .await
                    .map_err(|refusal| {
                        failed(
                            binary,
                            format!("{refusal}; for a program not built on handover, pass --version (and --target)"),
                        )
                    })?;
                let version = reply.version.ok_or_else(|| {
                    failed(binary, "answers no version in check mode; pass --version")
                })?;
                let version = semver::Version::parse(&version).map_err(|e| {
                    failed(
                        binary,
                        format!("answers version {version:?}, not semver: {e}"),
                    )
                })?;
                if let Some(target) = self.target.as_ref().filter(|t| **t != reply.target) {
                    return Err(failed(
                        binary,
                        format!("answers target {}, not {target}", reply.target),
                    ));
                }
                (version, reply.target)
            }
        };
        if target.is_empty() || target.contains(char::is_whitespace) {
            return Err(failed(
                binary,
                format!("target {target:?} must be one word"),
            ));
        }
        Ok(ReleaseMetadata::new(
            version,
            target,
            name,
            size,
            sha256,
            self.released.unwrap_or_else(SystemTime::now),
        ))
    }
}

pub use minisign::SecretKey;

/// Reads a minisign secret key file: without a password (`minisign -G -W`), or with
/// `password`; `None` for an encrypted key asks on the terminal.
pub fn read_secret_key(path: &Path, password: Option<String>) -> Result<SecretKey, Error> {
    use ct_codecs::{Base64, Decoder};
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the secret key {}", path.display()), e))?;
    let bad = |message: String| Error::Sign {
        file: path.to_path_buf(),
        message: format!("cannot use the secret key: {message}"),
    };
    let encoded = text
        .lines()
        .nth(1)
        .ok_or_else(|| bad("not a minisign secret key file (no key line)".into()))?;
    let bytes = Base64::decode_to_vec(encoded.trim(), None)
        .map_err(|_| bad("not a minisign secret key file (the key line is not base64)".into()))?;
    // A key without a password (`minisign -G -W`): the key is used as it is. Its checksum
    // is not checked here (minisign writes none); the signature is verified against the
    // key's public half before it is written, so a damaged key cannot sign.
    if bytes.get(2..4) == Some(&[0, 0][..]) {
        return SecretKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()));
    }
    let key_box = minisign::SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?;
    let asked = password.is_none();
    SecretKey::from_box(key_box, password).map_err(|e| {
        if asked {
            bad(format!("{e} (the key has a password: type it on a terminal, or set HANDOVER_SIGN_PASSWORD)"))
        } else {
            bad(e.to_string())
        }
    })
}

/// The minisign signature of `binary` with `metadata` as its trusted comment, checked against
/// the key's own public half before it is returned.
pub fn sign(
    binary: &Path,
    metadata: &ReleaseMetadata,
    key: &SecretKey,
    untrusted_comment: Option<&str>,
) -> Result<String, Error> {
    let public = minisign::PublicKey::from_secret_key(key).map_err(|e| {
        failed(
            binary,
            format!("the secret key has no usable public key: {e}"),
        )
    })?;
    let input = std::fs::File::open(binary)
        .map_err(|e| Error::io(format!("reading {}", binary.display()), e))?;
    let (size, sha256) = measure(binary)?;
    if (size, sha256) != (metadata.size, metadata.sha256) {
        return Err(failed(binary, "changed while it was being signed"));
    }
    let signature = minisign::sign(
        Some(&public),
        key,
        input,
        Some(&metadata.to_comment()),
        Some(untrusted_comment.unwrap_or("signature from handover sign")),
    )
    .map_err(|e| failed(binary, format!("signing: {e}")))?;
    Ok(signature.into_string())
}

fn measure(binary: &Path) -> Result<(u64, [u8; 32]), Error> {
    use sha2::Digest;
    let io = |e| Error::io(format!("reading {}", binary.display()), e);
    let mut file = std::fs::File::open(binary).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((size, hasher.finalize().into()))
}

/// This machine's target, for an ELF binary of this machine's architecture.
fn native_target(binary: &Path) -> Result<String, Error> {
    let mut header = [0u8; 20];
    let read = std::fs::File::open(binary)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| Error::io(format!("reading {}", binary.display()), e));
    let machine = match read {
        Ok(()) if &header[..4] == b"\x7fELF" => u16::from_le_bytes([header[18], header[19]]),
        _ => return Err(failed(binary, "is not an ELF binary; pass --target")),
    };
    let arch = match machine {
        62 => "x86_64",
        183 => "aarch64",
        3 => "x86",
        40 => "arm",
        243 => "riscv64",
        _ => "",
    };
    if arch != std::env::consts::ARCH {
        return Err(failed(
            binary,
            format!(
                "is built for another architecture (ELF machine {machine}) than this machine's {}; pass --target",
                std::env::consts::ARCH
            ),
        ));
    }
    Ok(crate::upgrade::TARGET.to_string())
}

fn failed(binary: &Path, message: impl Into<String>) -> Error {
    Error::Sign {
        file: binary.to_path_buf(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn describes_a_binary_that_does_not_answer_from_the_publishers_word() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("server");
        std::fs::copy(std::env::current_exe().unwrap(), &binary).unwrap();
        let mut describe = Describe::new(&binary);
        describe.version = Some(semver::Version::new(2, 0, 1));
        let metadata = describe.describe().await.unwrap();
        assert_eq!(metadata.name, "server");
        assert_eq!(metadata.target, crate::upgrade::TARGET);
        assert_eq!(metadata.size, std::fs::metadata(&binary).unwrap().len());

        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let mut describe = Describe::new(&script);
        describe.version = Some(semver::Version::new(1, 0, 0));
        let err = describe.describe().await.unwrap_err().to_string();
        assert!(err.contains("not an ELF binary; pass --target"), "{err}");
        describe.target = Some("x86_64-unknown-linux-musl".into());
        assert_eq!(
            describe.describe().await.unwrap().target,
            "x86_64-unknown-linux-musl"
        );
    }

    #[test]
    fn signs_with_the_metadata_as_trusted_comment_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        std::fs::write(&binary, b"release bytes").unwrap();
        let pair = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).unwrap();
        let key_path = dir.path().join("release.key");
        std::fs::write(&key_path, pair.sk.to_box(None).unwrap().into_string()).unwrap();
        assert!(read_secret_key(&key_path, Some("wrong".into()))
            .unwrap_err()
            .to_string()
            .contains("cannot use the secret key"));
        let key = read_secret_key(&key_path, Some("pw".into())).unwrap();
        let (size, sha256) = measure(&binary).unwrap();
        let metadata = ReleaseMetadata::new(
            semver::Version::new(1, 2, 3),
            "x86_64-unknown-linux-gnu",
            "app",
            size,
            sha256,
            SystemTime::UNIX_EPOCH,
        );
        let text = sign(&binary, &metadata, &key, None).unwrap();
        let signature = minisign_verify::Signature::decode(&text).unwrap();
        assert_eq!(signature.trusted_comment(), metadata.to_comment());
        let public = minisign_verify::PublicKey::from_base64(&pair.pk.to_base64()).unwrap();
        public.verify(b"release bytes", &signature, false).unwrap();
        let mut stale = metadata.clone();
        stale.size += 1;
        assert!(sign(&binary, &stale, &key, None)
            .unwrap_err()
            .to_string()
            .contains("changed while it was being signed"));
    }
}
