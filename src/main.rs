//! `handover`: run any program with zero-downtime restarts and unattended upgrades, and talk to
//! a running master.
//!
//! ```text
//! handover run --config handover.toml -- ./my-server --port-from-systemd
//! handover check --config handover.toml
//! handover status|restart|upgrade|rollback|reexec --config handover.toml
//! handover forget SHA256 --config handover.toml
//! handover sign -s release.key target/release/app
//! handover rollout start|status|halt|resume|promote --config handover.toml
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

mod rollout_cmd;
#[cfg(all(feature = "file", feature = "http"))]
mod rollout_serve;

#[derive(Parser)]
#[command(
    name = "handover",
    version,
    about = "Zero-downtime restarts and unattended upgrades for network services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Supervise PROGRAM: bind the sockets once, pass them by systemd socket activation, hand
    /// over to a new PROGRAM on SIGUSR2/SIGHUP or when the fetcher finds a new binary.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// The program and its arguments.
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        program: Vec<OsString>,
    },
    /// Validate a config file and say what `run` would do.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show a running master's phase, workers, binary and last upgrade.
    Status(Control),
    /// Ask a running master for a hand-over to a new worker.
    Restart(Control),
    /// Ask a running master's fetcher to look for a new binary now, and say what came of it.
    Upgrade(Control),
    /// Put the previous binary back and hand over to it.
    Rollback(Control),
    /// Re-execute the master from its binary on disk (for `handover run`, the `handover`
    /// executable; same PID, sockets and workers), after checking that it reads the master's
    /// state. SIGUSR1 does the same.
    Reexec(Control),
    /// Release a quarantined binary (by its sha256 or a prefix of it; `all` for every one),
    /// so that it may be installed again.
    #[command(alias = "unquarantine")]
    Forget {
        /// The sha256 (or a prefix of at least 8 digits), or `all`.
        sha256: String,
        #[command(flatten)]
        control: Control,
    },
    /// Sign a release: write FILE.minisig (minisign's format) with handover's release metadata
    /// in the trusted comment, read off the binary (its check-mode answer, size and sha256).
    /// The password of an encrypted key comes from HANDOVER_SIGN_PASSWORD, else the terminal.
    Sign(SignArgs),
    /// Stage a release across a fleet: write, sign and change the rollout manifest in the
    /// release store, and show the hosts' reports.
    #[command(subcommand)]
    Rollout(rollout_cmd::Rollout),
}

#[derive(Args)]
struct SignArgs {
    /// The minisign secret key (`minisign -G`; `-W` for one without a password).
    #[arg(short = 's', long = "secret-key", value_name = "KEY")]
    secret_key: PathBuf,
    /// Where to write the signature (default: FILE.minisig).
    #[arg(short = 'x', long = "sig-file", value_name = "SIG")]
    sig_file: Option<PathBuf>,
    /// The untrusted comment (not covered by the signature).
    #[arg(short = 'c', long = "comment")]
    comment: Option<String>,
    /// `name=` (default: FILE's name): the live binary's file name, or the service's
    /// `upgrade.release_name`.
    #[arg(long)]
    name: Option<String>,
    /// `version=` for a program that does not answer handover's check mode (it is not run).
    #[arg(long = "version", value_name = "SEMVER")]
    release_version: Option<String>,
    /// `target=` (default: the binary's answer, or this machine's for an ELF binary of its
    /// architecture).
    #[arg(long)]
    target: Option<String>,
    /// `released=` as RFC 3339 (default: now).
    #[arg(long, value_name = "TIME")]
    released: Option<String>,
    /// The release binary.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, short, default_value = "handover.toml")]
    config: PathBuf,
}

#[derive(Args)]
struct Control {
    /// The control socket (default: `control_socket` from the config file).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The config file naming the control socket.
    #[arg(long, short, default_value = "handover.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    // The exec shim runs between fork and the program: nothing else may happen first.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__exec") {
        let rest = args.get(2..).unwrap_or_default();
        let rest = rest
            .strip_prefix(&[OsString::from("--")][..])
            .unwrap_or(rest);
        let Some((program, program_args)) = rest.split_first() else {
            return ExitCode::from(2);
        };
        let error = handover::exec_shim(program, program_args);
        eprintln!(
            "handover: cannot execute {}: {error}",
            Path::new(program).display()
        );
        return ExitCode::from(127);
    }
    // A new `handover` run in check mode by a master about to re-execute into it.
    if handover::answer_sanity_run(Some(env!("CARGO_PKG_VERSION"))) {
        return ExitCode::SUCCESS;
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("handover: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, program } => run_program(&config.config, program),
        Command::Check { config } => check(&config.config),
        Command::Status(control) => talk(&control, "status"),
        Command::Restart(control) => talk(&control, "restart"),
        Command::Upgrade(control) => talk(&control, "upgrade"),
        Command::Rollback(control) => talk(&control, "rollback"),
        Command::Reexec(control) => talk(&control, "reexec"),
        Command::Sign(args) => sign(args),
        Command::Rollout(command) => rollout_cmd::run(command),
        Command::Forget { sha256, control } => {
            let sha256 = sha256.trim().to_ascii_lowercase();
            let hex = sha256.chars().all(|c| c.is_ascii_hexdigit());
            if sha256 != "all" && !(hex && sha256.len() >= 8) {
                bail!("name a sha256 (at least its first 8 hex digits) or `all`, not {sha256:?}");
            }
            talk(&control, &format!("forget {sha256}"))
        }
    }
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let mut describe = handover::sign::Describe::new(&args.file);
    describe.name = args.name;
    describe.target = args.target;
    describe.version = args
        .release_version
        .as_deref()
        .map(semver::Version::parse)
        .transpose()
        .context("--version")?;
    describe.released = args
        .released
        .as_deref()
        .map(humantime::parse_rfc3339)
        .transpose()
        .context("--released (want 2026-12-01T10:00:00Z)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metadata = runtime.block_on(describe.describe())?;
    let password = std::env::var("HANDOVER_SIGN_PASSWORD").ok();
    let key = handover::sign::read_secret_key(&args.secret_key, password)?;
    let signature = handover::sign::sign(&args.file, &metadata, &key, args.comment.as_deref())?;
    let out = args.sig_file.unwrap_or_else(|| {
        let mut name = args.file.clone().into_os_string();
        name.push(".minisig");
        PathBuf::from(name)
    });
    // Whole or not at all: a watcher must never see half a signature.
    let mut tmp = out.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, &signature).with_context(|| format!("writing {}", out.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {}", out.display(), metadata.to_comment());
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<handover::Config> {
    Ok(handover::Config::from_file(path)?)
}

fn init_logging(config: &handover::Config) {
    use std::io::IsTerminal;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.log.clone())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run_program(config_path: &Path, program: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    init_logging(&config);
    let (program, args) = program.split_first().context("no program given")?;
    let program = resolve_program(program)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = config;
    config.binary = Some(program.clone());
    config.upgrade.progress_bar = true;
    let fetcher = runtime.block_on(handover::build_fetcher(&config))?;
    let mut master = handover::Master::for_program(config, program, args.to_vec())?;
    if let Some(fetcher) = fetcher {
        master.set_fetcher(fetcher);
    }
    runtime.block_on(master.run())?;
    Ok(ExitCode::SUCCESS)
}

/// A program name without a slash is looked up in `PATH`, as a shell would.
fn resolve_program(program: &OsString) -> anyhow::Result<PathBuf> {
    let path = Path::new(program);
    if path.components().count() > 1 || path.is_absolute() {
        // `./app` becomes `<cwd>/app`: the path is shown in status and used for swaps.
        return Ok(std::env::current_dir()?.join(path).components().collect());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(path);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{} not found in PATH", path.display())
}

fn check(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    println!("{}: valid", config_path.display());
    for warning in config.deprecations() {
        println!("warning: {warning}");
    }
    for listen in &config.listen {
        println!("listen {:?}: {}", listen.name, listen.describe());
    }
    if config.listen.is_empty() {
        println!("listen: nothing (add [[listen]] tables)");
    }
    println!(
        "timeouts: ready {}, drain {}, idle grace {}",
        humantime::format_duration(config.ready_timeout),
        humantime::format_duration(config.drain_timeout),
        humantime::format_duration(config.idle_grace)
    );
    println!("restart on: {}", config.restart_signals.join(", "));
    match config.fetcher.as_deref() {
        Some(name) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(handover::build_fetcher(&config))
                .with_context(|| format!("fetcher {name}"))?;
            println!(
                "upgrades: fetcher {name}, every {} (probation {}, checksum {}, signature {})",
                humantime::format_duration(config.upgrade.interval),
                humantime::format_duration(config.upgrade.probation),
                match config.upgrade.checksum_required {
                    handover::ChecksumPolicy::Always => "required",
                    handover::ChecksumPolicy::Never => "checked when published",
                    _ => "required for remote fetchers",
                },
                match (
                    config.upgrade.public_keys.is_empty(),
                    config.upgrade.signed_metadata_required(),
                    config.upgrade.max_signature_age,
                ) {
                    (true, _, _) => "not required".to_string(),
                    (false, false, _) => "required, over the bytes".to_string(),
                    (false, true, None) => "required, with signed metadata".to_string(),
                    (false, true, Some(age)) => format!(
                        "required, with signed metadata, at most {} old",
                        humantime::format_duration(age)
                    ),
                },
            );
        }
        None => println!("upgrades: no fetcher (restart by signal or `handover restart` only)"),
    }
    match &config.control_socket {
        Some(path) => println!("control socket: {}", path.display()),
        None => println!("control socket: none"),
    }
    Ok(ExitCode::SUCCESS)
}

fn talk(control: &Control, command: &str) -> anyhow::Result<ExitCode> {
    let socket = match &control.socket {
        Some(socket) => socket.clone(),
        None => load(&control.config)?.control_socket.with_context(|| {
            format!(
                "{} sets no control_socket; pass --socket",
                control.config.display()
            )
        })?,
    };
    print!("{}", handover::control_request(&socket, command)?);
    Ok(ExitCode::SUCCESS)
}
