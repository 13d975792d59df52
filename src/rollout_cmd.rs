//! `handover rollout start|status|halt|resume|promote|patch`: the publisher's side of a staged
//! rollout, against the release store the config's fetcher reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use handover::rollout::{self, Manifest, Overview, Release, Step};

#[derive(Subcommand)]
pub(crate) enum Rollout {
    /// Write and sign a manifest that rolls out a release in steps.
    Start(StartArgs),
    /// Show the rollout: step, hosts per outcome, whether it halted.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Halt the rollout: no further host installs the release.
    Halt {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeyArg,
        /// Why (shown in every host's `handover status`).
        #[arg(long, default_value = "halted by hand")]
        reason: String,
    },
    /// Resume a halted rollout; failures reported so far no longer count.
    Resume {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Move the rollout to its next step now.
    Promote {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Write a delta patch from an older release to a newer one into the store: hosts that run
    /// the older one download the patch instead of the whole release.
    Patch(PatchArgs),
    /// Serve a directory (releases, manifest, reports) in the HTTP fetcher's store protocol.
    #[cfg(all(feature = "file", feature = "http"))]
    Serve(crate::rollout_serve::ServeArgs),
}

#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The config file whose fetcher names the release store.
    #[arg(long, short, default_value = "handover.toml")]
    config: PathBuf,
    /// Write the manifest and its signature to DIR instead of the store: for a store handover
    /// does not write to (a GitHub release: upload them as its assets).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct KeyArg {
    /// The minisign secret key that signs the manifest or patch (needed when hosts have
    /// `upgrade.public_keys`). Its password comes from HANDOVER_SIGN_PASSWORD, else the terminal.
    #[arg(short = 's', long = "secret-key", value_name = "KEY")]
    secret_key: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct PatchArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    key: KeyArg,
    /// The release the hosts run now.
    #[arg(long, value_name = "OLD")]
    from: PathBuf,
    /// The new release, as published.
    #[arg(value_name = "NEW")]
    file: PathBuf,
}

#[derive(Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    key: KeyArg,
    /// The release file as published (its sha256 is what hosts install).
    #[arg(value_name = "FILE", required_unless_present = "sha256")]
    file: Option<PathBuf>,
    /// The release's sha256, instead of FILE.
    #[arg(long, conflicts_with = "file")]
    sha256: Option<String>,
    /// The release's version.
    #[arg(long = "version", value_name = "SEMVER")]
    release_version: Option<String>,
    /// The steps: percent and duration, the last one without duration.
    #[arg(long, default_value = "1%:10m,10%:30m,50%:30m,100%")]
    steps: String,
    /// When the first step begins: `now` or RFC 3339.
    #[arg(long, default_value = "now")]
    start: String,
    /// How long after the start the manifest expires.
    #[arg(long, default_value = "30d")]
    expires: String,
    /// Halt once this many hosts rolled back or refused (0: never by count).
    #[arg(long, default_value_t = 3)]
    halt_hosts: u32,
    /// Halt once this percentage of the hosts that reported failed (0: never by share).
    #[arg(long, default_value_t = 1.0)]
    halt_percent: f64,
}

pub(crate) fn run(command: Rollout) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Rollout::Start(args) => start(args).await,
            Rollout::Patch(args) => patch(args).await,
            #[cfg(all(feature = "file", feature = "http"))]
            Rollout::Serve(args) => crate::rollout_serve::serve(args).await,
            Rollout::Status { store, json } => status(&store, json).await,
            Rollout::Halt { store, key, reason } => {
                change(&store, &key, |m| {
                    rollout::set_halted(m, Some(reason), SystemTime::now());
                    Ok("halted")
                })
                .await
            }
            Rollout::Resume { store, key } => {
                change(&store, &key, |m| {
                    rollout::set_halted(m, None, SystemTime::now());
                    Ok("resumed")
                })
                .await
            }
            Rollout::Promote { store, key } => {
                change(&store, &key, |m| {
                    if !rollout::promote(m, SystemTime::now()) {
                        bail!("the rollout is at its last step already");
                    }
                    Ok("promoted")
                })
                .await
            }
        }
    })
}

struct Publisher {
    fetcher: Box<dyn handover::fetcher::Fetcher>,
    keys: Vec<String>,
    out: Option<PathBuf>,
}

impl Publisher {
    async fn open(args: &StoreArgs) -> anyhow::Result<Self> {
        let config = handover::Config::from_file(&args.config)?;
        let fetcher = handover::build_fetcher(&config).await?.with_context(|| {
            format!(
                "{} names no fetcher, so no release store",
                args.config.display()
            )
        })?;
        let mut publisher = Self {
            fetcher,
            keys: config.upgrade.public_keys.clone(),
            out: args.out.clone(),
        };
        if publisher.fetcher.store().is_none() {
            bail!(
                "the {} fetcher has no store for a rollout manifest",
                publisher.fetcher.name()
            );
        }
        Ok(publisher)
    }

    fn store(&mut self) -> &mut dyn handover::fetcher::Store {
        self.fetcher.store().expect("checked when opened")
    }

    async fn manifest(&mut self) -> anyhow::Result<Manifest> {
        let keys = self.keys.clone();
        let store = self.store();
        let location = store.locate(rollout::MANIFEST);
        rollout::read(store, &keys).await?.with_context(|| {
            format!("no rollout manifest at {location}: start one with `handover rollout start`")
        })
    }

    fn key(&self, arg: &KeyArg) -> anyhow::Result<Option<minisign::SecretKey>> {
        match &arg.secret_key {
            Some(path) => {
                let password = std::env::var("HANDOVER_SIGN_PASSWORD").ok();
                Ok(Some(handover::sign::read_secret_key(path, password)?))
            }
            None if !self.keys.is_empty() => bail!(
                "the hosts check the manifest's signature (upgrade.public_keys is set): pass --secret-key"
            ),
            None => Ok(None),
        }
    }

    async fn publish(
        &mut self,
        manifest: &Manifest,
        key: Option<&minisign::SecretKey>,
    ) -> anyhow::Result<()> {
        let Some(dir) = &self.out else {
            rollout::publish(self.store(), manifest, key).await?;
            return Ok(());
        };
        manifest
            .validate()
            .map_err(|m| anyhow::anyhow!("the manifest: {m}"))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bytes = manifest.to_json();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        // The signature first, as in a store.
        if let Some(key) = key {
            write(rollout::SIGNATURE, rollout::sign(&bytes, key)?.as_bytes())?;
        }
        write(rollout::MANIFEST, &bytes)?;
        eprintln!(
            "wrote {0}/{1}{2}; publish them beside the release (GitHub: gh release upload TAG \
             {0}/{1}{3} --clobber)",
            dir.display(),
            rollout::MANIFEST,
            if key.is_some() {
                " and its signature"
            } else {
                ""
            },
            if key.is_some() {
                format!(" {}/{}", dir.display(), rollout::SIGNATURE)
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let mut publisher = Publisher::open(&args.store).await?;
    let key = publisher.key(&args.key)?;
    let sha256 = match (&args.file, &args.sha256) {
        (Some(file), _) => sha256_of(file)?,
        (None, Some(sha)) => sha.trim().to_ascii_lowercase(),
        (None, None) => bail!("name the release FILE or --sha256"),
    };
    let now = SystemTime::now();
    let start = match args.start.as_str() {
        "now" => now,
        text => {
            humantime::parse_rfc3339(text).context("--start (want now or 2026-12-01T10:00:00Z)")?
        }
    };
    let expires =
        start + humantime::parse_duration(&args.expires).context("--expires (want 30d)")?;
    let steps = parse_steps(&args.steps)?;
    let mut manifest = Manifest::new(
        Release::new(args.release_version, sha256),
        start,
        steps,
        expires,
    );
    manifest.halt = rollout::HaltRule::new(args.halt_hosts, args.halt_percent);
    // A new manifest for the same release continues its serial, so hosts take it.
    if let Ok(old) = publisher.manifest().await {
        if old.release.sha256 == manifest.release.sha256 {
            manifest.serial = old.serial + 1;
        }
    }
    manifest.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    publisher.publish(&manifest, key.as_ref()).await?;
    let location = publisher.store().locate(rollout::MANIFEST);
    println!(
        "{location}: rollout of {} started (serial {})",
        short(&manifest.release.sha256),
        manifest.serial
    );
    Ok(ExitCode::SUCCESS)
}

async fn patch(args: PatchArgs) -> anyhow::Result<ExitCode> {
    use handover::rollout::delta;
    let mut publisher = Publisher::open(&args.store).await?;
    let key = publisher.key(&args.key)?;
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (old, new) = (read(&args.from)?, read(&args.file)?);
    let (from, to) = (sha256_hex(&old), sha256_hex(&new));
    if from == to {
        bail!(
            "{} and {} are the same binary (sha256 {})",
            args.from.display(),
            args.file.display(),
            short(&from)
        );
    }
    let started = Instant::now();
    let patch = delta::make_patch(&old, &new)?;
    let took = started.elapsed();
    // What hosts will do, before anything is published.
    if delta::apply_patch(&old, &patch, new.len() as u64)? != new {
        bail!("the patch does not make {} again", args.file.display());
    }
    let name = delta::patch_name(&from, &to);
    let signature = match &key {
        Some(key) => Some(delta::sign(&patch, key, &from, &to)?),
        None => None,
    };
    // The signature first, as for the manifest: a host never finds an unsigned patch.
    let location = match &publisher.out {
        Some(dir) => {
            let write = |name: &str, bytes: &[u8]| {
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
            };
            if let Some(signature) = &signature {
                write(&delta::signature_name(&from, &to), signature.as_bytes())?;
            }
            write(&name, &patch)?;
            dir.join(&name).display().to_string()
        }
        None => {
            let store = publisher.store();
            if let Some(signature) = signature {
                store
                    .put(&delta::signature_name(&from, &to), signature.into_bytes())
                    .await?;
            }
            store.put(&name, patch.clone()).await?;
            store.locate(&name)
        }
    };
    println!(
        "{location}: {} bytes instead of {} ({:.2} %), from sha256 {} to {}, made in {:.2} s",
        patch.len(),
        new.len(),
        100.0 * patch.len() as f64 / new.len().max(1) as f64,
        short(&from),
        short(&to),
        took.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(args: &StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut publisher = Publisher::open(args).await?;
    let manifest = publisher.manifest().await?;
    let overview = Overview::read(publisher.store(), &manifest).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&overview)?);
    } else {
        print!("{}", overview.table());
    }
    Ok(ExitCode::SUCCESS)
}

async fn change(
    args: &StoreArgs,
    key: &KeyArg,
    edit: impl FnOnce(&mut Manifest) -> anyhow::Result<&'static str>,
) -> anyhow::Result<ExitCode> {
    let mut publisher = Publisher::open(args).await?;
    let key = publisher.key(key)?;
    let mut manifest = publisher.manifest().await?;
    let what = edit(&mut manifest)?;
    publisher.publish(&manifest, key.as_ref()).await?;
    println!(
        "rollout of {} {what} (serial {})",
        short(&manifest.release.sha256),
        manifest.serial
    );
    Ok(ExitCode::SUCCESS)
}

/// `1%:10m,10%:30m,100%`.
fn parse_steps(text: &str) -> anyhow::Result<Vec<Step>> {
    text.split(',')
        .map(|part| {
            let (percent, lasts) = match part.trim().split_once(':') {
                Some((p, d)) => (
                    p,
                    Some(
                        humantime::parse_duration(d.trim())
                            .with_context(|| format!("--steps: {part:?}"))?,
                    ),
                ),
                None => (part.trim(), None),
            };
            let percent: f64 = percent
                .trim()
                .trim_end_matches('%')
                .parse()
                .with_context(|| format!("--steps: {part:?} (want 10%:30m)"))?;
            Ok(Step::new(percent, lasts))
        })
        .collect()
}

fn sha256_of(file: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut input =
        std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut input, &mut hasher)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
