//! `[upgrade]`: the one table of upgrade policy. Fetchers report facts; every decision that
//! rests on them (is a checksum required, how large may a candidate be, may it be older) is
//! taken here, once, with one documented default each.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How upgrades are fetched, checked and installed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpgradeConfig {
    /// How often the fetcher is asked for something new.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this fraction of `interval` is added at random, so a fleet does not poll in step.
    pub jitter: f64,
    /// The longest wait after transport errors (the wait doubles from `interval` on each
    /// error). A publication that is not complete yet is no error: it is looked at again at the
    /// normal interval.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Candidates larger than this are refused while downloading: bytes, or `"512MiB"`.
    /// Default 1 GiB. For an archive, this bounds the archive and the binary taken out of it.
    #[serde(with = "handover_fetcher::size")]
    pub max_size: u64,
    /// Whether a candidate must come with a published SHA-256 (a checksum file, a digest
    /// field, object metadata): `true`, `false`, or `"remote"` (the default): required for
    /// candidates fetched over a network (GitHub, S3, HTTP), not for a file on this machine.
    /// A candidate waiting for its checksum is not refused for good: it is installed once the
    /// checksum is published.
    pub checksum_required: ChecksumPolicy,
    /// How a candidate is run before it is trusted: `handover` (it must answer handover's check
    /// protocol: programs built on this library), `exit-zero` (run with `sanity_args`, must exit
    /// 0: the default for `handover run`), or `none`.
    pub sanity: Sanity,
    /// Arguments of the `exit-zero` sanity run.
    pub sanity_args: Vec<String>,
    /// How long the candidate's sanity run may take.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// After a new worker is ready, a crash within this window rolls back to the previous binary.
    #[serde(with = "humantime_serde")]
    pub probation: Duration,
    /// Swap the binary on disk but do not hand over; the next restart runs it.
    pub stage_only: bool,
    /// After an upgrade of a program built on this library passes probation, the master
    /// re-executes itself from the new binary too (same PID, sockets and workers kept), so the
    /// fetchers and checks run the new code. Default `true`; a new build that cannot read the
    /// master's state is installed for workers only, with a warning in `handover status`.
    pub upgrade_master: bool,
    /// Allow a candidate whose claimed version is lower than the running one.
    pub allow_downgrade: bool,
    /// Minisign public keys (the base64 line of a `.pub` file). When any is set, every candidate
    /// must carry a valid signature by one of them.
    pub public_keys: Vec<String>,
    /// Whether the signature must carry handover's [release metadata](crate::release) (version,
    /// target, name, size, sha256, release time) in its trusted comment. Default: `true` when
    /// `public_keys` is set. With it, the *signed* version is the one downgrade protection
    /// uses, and the highest signed version ever installed is the floor, across restarts.
    /// `false` accepts signatures over the bytes alone (metadata present is still checked).
    pub require_signed_metadata: Option<bool>,
    /// Refuse a release signed longer ago than this (`"30d"`), and warn in `handover status`
    /// when the newest release seen is older: a mirror that keeps serving a stale "latest" is
    /// noticed. Needs `public_keys`. Default: no limit.
    #[serde(with = "humantime_serde")]
    pub max_signature_age: Option<Duration>,
    /// The `name=` signed releases must carry. Default: the live binary's file name.
    pub release_name: Option<String>,
    /// A command run before the swap with the candidate's path as its argument and
    /// `HANDOVER_CANDIDATE_SHA256` in its environment; a non-zero exit vetoes the upgrade.
    pub pre_upgrade: Option<Vec<String>>,
    /// Refuse upgrades while the watched file, the live binary or any directory above them
    /// can be written by a user other than the service's and root (world-writable, owned by
    /// another user, or group-writable with another member); the same candidate is taken
    /// once the path is private.
    pub refuse_shared_directory: bool,
    /// Where the upgrade state file (`<bin>.handover-state`: quarantined hashes, the highest
    /// version installed, the upgrade in probation) is kept. Default: beside the live binary.
    pub state_dir: Option<PathBuf>,
    /// This host's id in staged rollouts (its bucket, its reports). Default: the machine id
    /// (`/etc/machine-id`), else the host name.
    pub host_id: Option<String>,
    /// Draw a progress bar for long downloads when stderr is a terminal. Off by default in
    /// the library (a log line every few seconds instead); `handover run` turns it on.
    pub progress_bar: bool,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: 0.1,
            max_backoff: Duration::from_secs(600),
            max_size: 1024 * 1024 * 1024,
            checksum_required: ChecksumPolicy::Remote,
            sanity: Sanity::Handover,
            sanity_args: vec!["--version".into()],
            check_timeout: Duration::from_secs(10),
            probation: Duration::from_secs(30),
            stage_only: false,
            upgrade_master: true,
            allow_downgrade: false,
            public_keys: Vec::new(),
            require_signed_metadata: None,
            max_signature_age: None,
            release_name: None,
            pre_upgrade: None,
            refuse_shared_directory: true,
            state_dir: None,
            progress_bar: false,
            host_id: None,
        }
    }
}

impl UpgradeConfig {
    /// Whether signed release metadata is required (see
    /// [`require_signed_metadata`](Self::require_signed_metadata)).
    pub fn signed_metadata_required(&self) -> bool {
        self.require_signed_metadata
            .unwrap_or(!self.public_keys.is_empty())
    }

    /// Checks what serde cannot; returns the offending field and what is wrong with it.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(("upgrade.jitter", "must be between 0 and 1".into()));
        }
        if self.interval.is_zero() {
            return Err(("upgrade.interval", "must be more than zero".into()));
        }
        if let Some(hook) = &self.pre_upgrade {
            if hook.is_empty() {
                return Err(("upgrade.pre_upgrade", "must name a program".into()));
            }
        }
        for key in &self.public_keys {
            if let Err(e) = minisign_verify::PublicKey::from_base64(key.trim()) {
                return Err((
                    "upgrade.public_keys",
                    format!("{key:?} is not a minisign public key (the base64 line of a .pub file): {e}"),
                ));
            }
        }
        if self.public_keys.is_empty() {
            if self.require_signed_metadata == Some(true) {
                return Err((
                    "upgrade.require_signed_metadata",
                    "needs upgrade.public_keys (the keys that sign the metadata)".into(),
                ));
            }
            if self.max_signature_age.is_some() {
                return Err((
                    "upgrade.max_signature_age",
                    "needs upgrade.public_keys (the release time it checks is signed)".into(),
                ));
            }
        }
        if self.max_signature_age.is_some_and(|age| age.is_zero()) {
            return Err(("upgrade.max_signature_age", "must be more than zero".into()));
        }
        if let Some(name) = &self.release_name {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(("upgrade.release_name", format!("{name:?} must be one word")));
            }
        }
        Ok(())
    }
}

/// See [`UpgradeConfig::sanity`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Sanity {
    /// The candidate answers handover's check protocol (nonce, version, target).
    Handover,
    /// The candidate, run with `sanity_args`, exits 0.
    ExitZero,
    /// No sanity run.
    None,
}

/// See [`UpgradeConfig::checksum_required`]. Written `true`, `false` or `"remote"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChecksumPolicy {
    /// Every candidate needs a published SHA-256.
    Always,
    /// Candidates fetched over a network need one; a file on this machine does not.
    Remote,
    /// A published SHA-256 is checked when there is one, and not asked for.
    Never,
}

impl ChecksumPolicy {
    /// Whether a candidate from a local (`true`) or remote source needs a checksum.
    pub fn requires(self, local: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Remote => !local,
            Self::Never => false,
        }
    }
}

impl<'de> Deserialize<'de> for ChecksumPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Flag(true) => Ok(Self::Always),
            Written::Flag(false) => Ok(Self::Never),
            Written::Word(w) if w == "remote" => Ok(Self::Remote),
            Written::Word(w) if w == "always" => Ok(Self::Always),
            Written::Word(w) if w == "never" => Ok(Self::Never),
            Written::Word(w) => Err(serde::de::Error::custom(format!(
                "checksum_required must be true, false or \"remote\", not {w:?}"
            ))),
        }
    }
}
