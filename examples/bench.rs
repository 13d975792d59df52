//! Benchmarks handover on 127.0.0.1 and writes the figures the README shows.
//!
//! ```text
//! cargo build --release --example hello
//! cargo run --release --example bench -- --quick        # ~1 minute sanity run
//! cargo run --release --example bench                   # 50 restarts per column, soak 200
//! cargo run --release --example bench -- --soak 8000    # the README figures (~7 minutes)
//! ```
//!
//! In one run, against copies of `target/release/examples/hello` under a handover master:
//! 1. failed requests across restarts (SIGUSR2) under keep-alive load with slow requests in
//!    flight, from wrk (HTTP/1.1; skipped when wrk is missing) and from this tool's own hyper
//!    client (HTTP/1.1 and HTTP/2);
//! 2. hand-over time: SIGUSR2 → first answer from a new worker pid;
//! 3. latency inside restart windows (SIGUSR2 → old worker gone) vs steady state;
//!    h2load (HTTP/2, counting its own errors) runs without and through the same restarts;
//! 4. throughput under handover vs the same hyper service without handover (a baseline server
//!    inside this tool), same client, connections, threads and duration; and the same pair
//!    with no restart at all, in alternating rounds (what handover costs when idle);
//! 5. upgrade latency, file landing → new sha256 answering, with inotify and with polling;
//! 6. the master's idle RSS and CPU with the file fetcher polling, and its fds and RSS before
//!    and after a soak of hand-overs;
//! 7. the master upgrading itself in place (SIGUSR1): exec-and-adopt time as the new master
//!    logs it, and whether the serving worker and the master's fds stayed the same;
//! 8. side by side under the same wrk load and restart count: handover, cloudflare/tableflip
//!    (a Go demo server built here, restarted with SIGHUP; skipped without Go) and a naive
//!    restart (plain hyper stopped and started again on the same port);
//! 9. handover under wrk at `--big-connections` kept-alive connections and `--big-restarts`;
//! 10. publish → serving through the S3 fetcher (moto) and the GitHub fetcher (a fake GitHub
//!     API in this tool), when hello is built with those features; and for every upgrade row,
//!     the p50 of each stage the master logs (`upgrade stages: …`).
//!
//! Writes `results.json`, `results.md`, `http2.md`, `websocket.md` and `latency.svg` to `--out` (default `target/bench`)
//! and prints the markdown table. Every process it starts is stopped when it ends, also on a
//! panic; every phase is bounded in time and count.

// Only `hello` is used: the baseline serves exactly what the workers serve. Not formatted from
// here: the file belongs to the examples.
#[allow(dead_code)]
#[rustfmt::skip]
#[path = "common/mod.rs"]
mod common;

#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/chart.rs"]
mod chart;
#[path = "bench/client.rs"]
mod client;
#[path = "bench/compare.rs"]
mod compare;
#[path = "bench/github.rs"]
mod github;
#[path = "bench/h2load.rs"]
mod h2load;
#[path = "bench/master.rs"]
mod master;
#[path = "bench/peers.rs"]
mod peers;
#[path = "bench/phases.rs"]
mod phases;
#[path = "bench/probe.rs"]
mod probe;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/remote.rs"]
mod remote;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/tables.rs"]
mod tables;
#[path = "bench/upgrades.rs"]
mod upgrades;
#[path = "bench/websocket.rs"]
mod websocket;
#[path = "bench/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use baseline::BaselineProcess;
use client::Protocol;
use master::{Master, MasterSpec};
use phases::Shape;
use report::{Results, Settings};
use stats::Dist;

/// Benchmarks zero-downtime restarts and upgrades of the hello example under handover.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Options {
    /// A fast sanity run: 5 restarts, 64 connections, 3 s phases, soak 50, 2 upgrades per mode
    /// (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Restarts (SIGUSR2) per load phase [default: 50].
    #[arg(long)]
    restarts: Option<usize>,
    /// Keep-alive connections; 1 in 16 of them loops on /sleep?ms=200 [default: 256].
    #[arg(long)]
    connections: Option<usize>,
    /// Hand-overs in the soak that checks the master's fds and RSS; 1000 is the full soak
    /// [default: 200].
    #[arg(long)]
    soak: Option<usize>,
    /// Each load phase lasts at least this many seconds [default: 10].
    #[arg(long)]
    duration: Option<f64>,
    /// Steady-state pause after each restart window, in ms [default: 500].
    #[arg(long)]
    gap_ms: Option<u64>,
    /// Master upgrades in place (SIGUSR1: exec of the binary, workers adopted) timed after the
    /// soak [default: 50].
    #[arg(long)]
    master_upgrades: Option<usize>,
    /// Upgrades timed per mode (inotify, polling) [default: 5].
    #[arg(long)]
    upgrade_reps: Option<usize>,
    /// Runtime threads of each hello worker and of the baseline server [default: nproc].
    #[arg(long)]
    threads: Option<usize>,
    /// Runtime threads of the load client (and wrk) [default: nproc].
    #[arg(long)]
    client_threads: Option<usize>,
    /// The hello binary [default: beside this binary, built if missing].
    #[arg(long)]
    hello: Option<PathBuf>,
    /// Where results.json, results.md, latency.svg and the logs go [default: target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Kept-alive connections of the big wrk row (handover only) [default: 1024].
    #[arg(long)]
    big_connections: Option<usize>,
    /// Restarts of the big wrk row [default: 100].
    #[arg(long)]
    big_restarts: Option<usize>,
    /// WebSockets held open through the WebSocket row's restarts [default: 1000].
    #[arg(long)]
    websockets: Option<usize>,
    /// Restarts of the WebSocket row [default: 20].
    #[arg(long)]
    websocket_restarts: Option<usize>,
    /// Run only the WebSocket row, print it and stop.
    #[arg(long)]
    websocket_only: bool,
    /// Run only the HTTP/2 table (the h2 client and h2load under `--restarts` restarts), print
    /// it and stop.
    #[arg(long)]
    http2_only: bool,
    /// Internal: serve the baseline (plain hyper) until stdin closes.
    #[arg(long = "serve-baseline", hide = true)]
    serve_baseline: bool,
    /// Internal: the baseline's port (0: any free one).
    #[arg(long, hide = true, default_value_t = 0)]
    port: u16,
}

/// Load before the first restart of a phase, so connections are up and warm.
pub(crate) const WARMUP: Duration = Duration::from_secs(1);
/// Requests started this soon after the load began are left out of latency figures: every
/// connection is being opened at once then.
pub(crate) const RAMP_UP: Duration = Duration::from_millis(500);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// ready_timeout (10 s) + drain_timeout + slack: a restart that takes longer is "incomplete".
pub(crate) const RESTART_LIMIT: Duration = Duration::from_secs(20);
/// A restart window as it usually is (~100 ms), to estimate a phase's length in advance.
pub(crate) const TYPICAL_WINDOW: Duration = Duration::from_millis(150);
const SLOW_PATH: &str = "/sleep?ms=200";
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Probation after an upgrade; the master queues the next candidate until it is over.
pub(crate) const PROBATION: Duration = Duration::from_millis(500);
pub(crate) const IDLE_WINDOW: Duration = Duration::from_secs(5);
pub(crate) const CHART_BUCKET_US: u64 = 100_000;

fn main() -> ExitCode {
    let options = Options::parse();
    let result = if options.serve_baseline {
        let threads = options.threads.unwrap_or_else(nproc);
        baseline::serve_until_stdin_closes(threads, options.port)
    } else {
        run(options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn settings(options: &Options) -> Settings {
    let quick = options.quick;
    let pick = |explicit: Option<usize>, normal: usize, fast: usize| {
        explicit.unwrap_or(if quick { fast } else { normal })
    };
    let nproc = nproc();
    let connections = pick(options.connections, 256, 64).max(2);
    Settings {
        arguments: std::env::args().skip(1).collect(),
        quick,
        restarts: pick(options.restarts, 50, 5),
        connections,
        slow_connections: (connections / 16).max(1),
        slow_path: SLOW_PATH.into(),
        server_threads: options.threads.unwrap_or(nproc).max(1),
        client_threads: options.client_threads.unwrap_or(nproc).max(1),
        min_phase_seconds: options
            .duration
            .unwrap_or(if quick { 3.0 } else { 10.0 })
            .max(0.0),
        warmup_ms: WARMUP.as_millis() as u64,
        gap_ms: options.gap_ms.unwrap_or(if quick { 300 } else { 500 }),
        request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        drain_timeout_ms: DRAIN_TIMEOUT.as_millis() as u64,
        soak: pick(options.soak, 200, 50),
        master_upgrades: pick(options.master_upgrades, 50, 10),
        upgrade_repetitions: pick(options.upgrade_reps, 5, 2),
        steady_rounds: if quick { 2 } else { 4 },
        steady_round_seconds: if quick { 1.5 } else { 3.0 },
        big_connections: pick(options.big_connections, 1024, 256).max(2),
        big_restarts: pick(options.big_restarts, 100, 10),
    }
}

fn run(options: Options) -> anyhow::Result<()> {
    let settings = settings(&options);
    if cfg!(debug_assertions) {
        eprintln!("bench: this is a debug build; run with --release for meaningful figures");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("target/bench"));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("handover-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let websocket_row = || -> anyhow::Result<String> {
        let binary = find_example(None, workspace, "websocket")?;
        let (sockets, restarts) = (
            options.websockets.unwrap_or(1000),
            options.websocket_restarts.unwrap_or(20),
        );
        say(&format!(
            "websocket row: {sockets} sockets × {restarts} restarts"
        ));
        let row = websocket::run(&binary, sockets, restarts, scratch.path(), &logs)?;
        let table = websocket::markdown(&row);
        std::fs::write(out.join("websocket.md"), &table)?;
        Ok(table)
    };
    if options.websocket_only {
        println!("{}", websocket_row()?);
        return Ok(());
    }
    let hello = find_example(options.hello.as_deref(), workspace, "hello")?;
    let epoch = Instant::now();
    let machine = report::Machine::read();
    say(&format!(
        "hello: {}; logs: {}; {} restarts × {} connections per phase",
        hello.display(),
        logs.display(),
        settings.restarts,
        settings.connections
    ));

    // The big row holds over a thousand connections in wrk and as many in the worker.
    let needed = settings.big_connections as u64 + 256;
    match procs::raise_fd_limit() {
        Some(limit) if limit < needed => say(&format!(
            "warning: open files are limited to {limit} (the hard limit), fewer than the \
             {needed} the {}-connection row needs: expect connect errors there",
            settings.big_connections
        )),
        Some(_) => {}
        None => say("warning: cannot read the open-files limit"),
    }

    // 1-4: restarts under load, on one master with no fetcher (nothing but SIGUSR2 restarts).
    let spec = MasterSpec {
        name: "restarts",
        worker_threads: settings.server_threads,
        drain_timeout: DRAIN_TIMEOUT,
        extra_toml: String::new(),
        env: Vec::new(),
    };
    let mut restarts_master =
        Master::start(&spec, &hello, &scratch.path().join("restarts"), &logs)?;
    if options.http2_only {
        let phase = phases::client_phase(
            &mut restarts_master,
            &BaselineProcess::start(settings.server_threads, 0)?,
            Protocol::Http2,
            &settings,
            epoch,
        )?;
        let h2load = h2load::runs(&mut restarts_master, &settings, epoch, &logs)?;
        let table = h2load::markdown(Some(&phase), &h2load);
        std::fs::write(out.join("http2.md"), &table)?;
        println!("{table}");
        return Ok(());
    }
    let shape = Shape::of(&settings);
    let (wrk_phase, wrk_skipped) = if wrk::available() {
        let phase = phases::wrk_phase(
            &mut restarts_master,
            shape,
            &settings,
            epoch,
            &logs,
            "handover",
        )?;
        (Some(phase), None)
    } else {
        eprintln!("bench: {}", wrk::INSTALL_HINT);
        (None, Some(wrk::INSTALL_HINT.to_string()))
    };
    let baseline = BaselineProcess::start(settings.server_threads, 0)?;
    let mut client_phases = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        client_phases.push(phases::client_phase(
            &mut restarts_master,
            &baseline,
            protocol,
            &settings,
            epoch,
        )?);
    }
    drop(baseline);
    // 4b: h2load, counting its own errors, without and with restarts (its table: http2.md).
    let h2load = h2load::runs(&mut restarts_master, &settings, epoch, &logs)?;
    let http2_table = h2load::markdown(
        client_phases.iter().find(|c| c.protocol == "HTTP/2"),
        &h2load,
    );
    std::fs::write(out.join("http2.md"), &http2_table)?;

    // 8: handover, tableflip and a naive restart side by side, same load and restart count.
    let comparison = compare::run(
        &mut restarts_master,
        &settings,
        epoch,
        &logs,
        scratch.path(),
    )?;
    // 9: many connections, many restarts (wrk only).
    let big_shape = Shape {
        restarts: settings.big_restarts,
        connections: settings.big_connections,
    };
    let big = if wrk::available() {
        let tag = "handover-big";
        Some(phases::wrk_phase(
            &mut restarts_master,
            big_shape,
            &settings,
            epoch,
            &logs,
            tag,
        )?)
    } else {
        None
    };
    let handover_breakdown_under_load = upgrades::handover_breakdown(restarts_master.log());
    drop(restarts_master);

    let handover_time_under_load_ms = Dist::from_micros(
        wrk_phase
            .iter()
            .map(|w| &w.restarts)
            .chain(client_phases.iter().map(|c| &c.restarts))
            .flat_map(|r| r.handover_samples_ms.iter())
            .map(|ms| (ms * 1000.0) as u64)
            .collect(),
    );

    // 5: upgrades, one master per mode (the mode is configuration).
    let (inotify, inotify_master) =
        upgrades::upgrade_phase(false, &hello, scratch.path(), &logs, &settings)?;
    drop(inotify_master);
    // 10: remote fetchers, each skipped with a reason when it cannot run here.
    let remote = remote::run(&hello, scratch.path(), &logs, &settings);
    let (polling, mut polling_master) =
        upgrades::upgrade_phase(true, &hello, scratch.path(), &logs, &settings)?;

    // 6: the polling master at rest, then through the soak.
    let master_figures = upgrades::master_phase(&mut polling_master, &settings, epoch)?;
    let handover_breakdown_without_load = upgrades::handover_breakdown(polling_master.log());
    drop(polling_master);

    let results = Results {
        machine,
        settings,
        wrk: wrk_phase,
        wrk_skipped,
        client: client_phases,
        handover_time_under_load_ms,
        handover_breakdown_under_load,
        handover_breakdown_without_load,
        upgrade: vec![inotify, polling],
        master: master_figures,
        comparison,
        big,
        remote,
    };
    let markdown = report::write_all(&results, &out)?;
    println!("{markdown}");
    println!("{http2_table}");
    // 11: WebSockets through restarts (its own table, websocket.md).
    match websocket_row() {
        Ok(table) => println!("{table}"),
        Err(e) => say(&format!("websocket row skipped: {e:#}")),
    }
    say(&format!(
        "wrote {}/results.json, results.md and latency.svg",
        out.display()
    ));
    Ok(())
}

/// Progress on stderr, so stdout carries only the table.
pub(crate) fn say(message: &str) {
    eprintln!("bench: {message}");
}

/// An example's binary (`hello`, `websocket`): given, or beside this one (same profile), built
/// if missing.
fn find_example(given: Option<&Path>, workspace: &Path, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--{name} {}: no such file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this binary's path")?;
    let hello = me.with_file_name(name);
    if hello.is_file() {
        return Ok(hello);
    }
    let profile = if cfg!(debug_assertions) {
        vec![]
    } else {
        vec!["--release"]
    };
    say(&format!(
        "{} is missing; running `cargo build {} --example {name}`",
        hello.display(),
        profile.join(" ")
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .arg("build")
        .args(&profile)
        .args(["--example", name])
        .current_dir(workspace)
        .status();
    match status {
        Ok(status) if status.success() && hello.is_file() => Ok(hello),
        _ => bail!(
            "{} is missing and could not be built; run `cargo build {} --example {name}` first",
            hello.display(),
            profile.join(" ")
        ),
    }
}
