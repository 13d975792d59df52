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
//! 4. throughput under handover vs the same hyper service without handover (a baseline server
//!    inside this tool), same client, connections, threads and duration; and the same pair
//!    with no restart at all, in alternating rounds (what handover costs when idle);
//! 5. upgrade latency, file landing → new sha256 answering, with inotify and with polling;
//! 6. the master's idle RSS and CPU with the file fetcher polling, and its fds and RSS before
//!    and after a soak of hand-overs;
//! 7. the master upgrading itself in place (SIGUSR1): exec-and-adopt time as the new master
//!    logs it, and whether the serving worker and the master's fds stayed the same.
//!
//! Writes `results.json`, `results.md` and `latency.svg` to `--out` (default `target/bench`)
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
#[path = "bench/client.rs"]
mod client;
#[path = "bench/master.rs"]
mod master;
#[path = "bench/probe.rs"]
mod probe;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/wrk.rs"]
mod wrk;

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use sha2::{Digest, Sha256};

use baseline::BaselineProcess;
use client::{Load, LoadResult, LoadSpec, Outcome, Protocol};
use master::{Master, MasterSpec, Restart};
use report::{
    Bucket, Chart, ClientPhase, Failures, InPlaceFigures, MasterFigures, RestartFigures, Results,
    Settings, SoakFigures, SteadyComparison, ThroughputRun, UpgradePhase, WrkPhase,
};
use stats::{Dist, Windows};

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
    /// Internal: serve the baseline (plain hyper) until stdin closes.
    #[arg(long = "serve-baseline", hide = true)]
    serve_baseline: bool,
}

/// Load before the first restart of a phase, so connections are up and warm.
const WARMUP: Duration = Duration::from_secs(1);
/// Requests started this soon after the load began are left out of latency figures: every
/// connection is being opened at once then.
const RAMP_UP: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// ready_timeout (10 s) + drain_timeout + slack: a restart that takes longer is "incomplete".
const RESTART_LIMIT: Duration = Duration::from_secs(20);
/// A restart window as it usually is (~100 ms), to estimate a phase's length in advance.
const TYPICAL_WINDOW: Duration = Duration::from_millis(150);
const SLOW_PATH: &str = "/sleep?ms=200";
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Probation after an upgrade; the master queues the next candidate until it is over.
const PROBATION: Duration = Duration::from_millis(500);
const IDLE_WINDOW: Duration = Duration::from_secs(5);
const CHART_BUCKET_US: u64 = 100_000;

fn main() -> ExitCode {
    let options = Options::parse();
    let result = if options.serve_baseline {
        let threads = options.threads.unwrap_or_else(nproc);
        baseline::serve_until_stdin_closes(threads)
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
    let hello = find_hello(options.hello.as_deref(), workspace)?;
    let scratch = tempfile::Builder::new()
        .prefix("handover-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let epoch = Instant::now();
    let machine = report::Machine::read();
    say(&format!(
        "hello: {}; logs: {}; {} restarts × {} connections per phase",
        hello.display(),
        logs.display(),
        settings.restarts,
        settings.connections
    ));

    // 1-4: restarts under load, on one master with no fetcher (nothing but SIGUSR2 restarts).
    let spec = MasterSpec {
        name: "restarts",
        worker_threads: settings.server_threads,
        drain_timeout: DRAIN_TIMEOUT,
        extra_toml: String::new(),
    };
    let mut restarts_master =
        Master::start(&spec, &hello, &scratch.path().join("restarts"), &logs)?;
    let (wrk_phase, wrk_skipped) = if wrk::available() {
        (
            Some(wrk_phase(&mut restarts_master, &settings, epoch, &logs)?),
            None,
        )
    } else {
        eprintln!("bench: {}", wrk::INSTALL_HINT);
        (None, Some(wrk::INSTALL_HINT.to_string()))
    };
    let baseline = BaselineProcess::start(settings.server_threads)?;
    let mut client_phases = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        client_phases.push(client_phase(
            &mut restarts_master,
            &baseline,
            protocol,
            &settings,
            epoch,
        )?);
    }
    drop(baseline);
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
    let (inotify, inotify_master) = upgrade_phase(false, &hello, scratch.path(), &logs, &settings)?;
    drop(inotify_master);
    let (polling, mut polling_master) =
        upgrade_phase(true, &hello, scratch.path(), &logs, &settings)?;

    // 6: the polling master at rest, then through the soak.
    let master_figures = master_phase(&mut polling_master, &settings, epoch)?;
    drop(polling_master);

    let results = Results {
        machine,
        settings,
        wrk: wrk_phase,
        wrk_skipped,
        client: client_phases,
        handover_time_under_load_ms,
        upgrade: vec![inotify, polling],
        master: master_figures,
    };
    let markdown = report::write_all(&results, &out)?;
    println!("{markdown}");
    say(&format!(
        "wrote {}/results.json, results.md and latency.svg",
        out.display()
    ));
    Ok(())
}

/// Progress on stderr, so stdout carries only the table.
fn say(message: &str) {
    eprintln!("bench: {message}");
}

/// The hello binary: given, or beside this one (same profile), built if missing.
fn find_hello(given: Option<&Path>, workspace: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--hello {}: no such file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this binary's path")?;
    let hello = me.with_file_name("hello");
    if hello.is_file() {
        return Ok(hello);
    }
    let profile = if cfg!(debug_assertions) {
        vec![]
    } else {
        vec!["--release"]
    };
    say(&format!(
        "{} is missing; running `cargo build {} --example hello`",
        hello.display(),
        profile.join(" ")
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .arg("build")
        .args(&profile)
        .args(["--example", "hello"])
        .current_dir(workspace)
        .status();
    match status {
        Ok(status) if status.success() && hello.is_file() => Ok(hello),
        _ => bail!(
            "{} is missing and could not be built; run `cargo build {} --example hello` first",
            hello.display(),
            profile.join(" ")
        ),
    }
}

/// Restarts `count` times while a load runs (started by the caller), each followed by `gap`,
/// and keeps the load going until the phase has lasted `settings.min_phase_seconds`.
fn drive_restarts(
    master: &mut Master,
    settings: &Settings,
    epoch: Instant,
    tag: &str,
) -> anyhow::Result<Vec<Restart>> {
    let phase_start = Instant::now();
    std::thread::sleep(WARMUP);
    let mut restarts = Vec::with_capacity(settings.restarts);
    for index in 0..settings.restarts {
        let restart = master.restart(epoch, RESTART_LIMIT)?;
        let took = restart
            .handover_time()
            .map_or_else(|| "no new worker!".into(), |d| format!("{d:.1?}"));
        eprint!(
            "\rbench: [{tag}] restart {}/{}: {took}      ",
            index + 1,
            settings.restarts
        );
        let _ = std::io::stderr().flush();
        restarts.push(restart);
        std::thread::sleep(Duration::from_millis(settings.gap_ms));
    }
    eprintln!();
    let end = phase_start + Duration::from_secs_f64(settings.min_phase_seconds);
    if let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    Ok(restarts)
}

fn restart_figures(restarts: &[Restart]) -> RestartFigures {
    RestartFigures {
        count: restarts.len(),
        incomplete: restarts
            .iter()
            .filter(|r| r.first_new.is_none() || r.old_gone.is_none())
            .count(),
        handover_ms: Dist::from_durations(restarts.iter().filter_map(Restart::handover_time)),
        handover_samples_ms: restarts
            .iter()
            .filter_map(Restart::handover_time)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect(),
        window_ms: Dist::from_durations(
            restarts.iter().filter_map(|r| Some(r.old_gone? - r.signal)),
        ),
    }
}

/// wrk on `/` plus wrk on the slow path, with restarts.
fn wrk_phase(
    master: &mut Master,
    settings: &Settings,
    epoch: Instant,
    logs: &Path,
) -> anyhow::Result<WrkPhase> {
    say("wrk (HTTP/1.1) under restarts");
    // An upper bound only: wrk is stopped with SIGINT as soon as the restarts are done.
    let bound = WARMUP
        + (RESTART_LIMIT + Duration::from_millis(settings.gap_ms)) * settings.restarts as u32
        + Duration::from_secs_f64(settings.min_phase_seconds)
        + Duration::from_secs(10);
    let fast_url = format!("http://{}/", master.addr);
    let slow_url = format!("http://{}{}", master.addr, settings.slow_path);
    let fast_connections = settings.connections - settings.slow_connections;
    let fast = wrk::Wrk::start(
        &fast_url,
        settings.client_threads,
        fast_connections,
        bound,
        REQUEST_TIMEOUT,
        &logs.join("wrk-fast.txt"),
    )?;
    let slow = wrk::Wrk::start(
        &slow_url,
        1,
        settings.slow_connections,
        bound,
        REQUEST_TIMEOUT,
        &logs.join("wrk-slow.txt"),
    )?;
    let restarts = drive_restarts(master, settings, epoch, "wrk")?;
    let fast = fast.finish(&fast_url, fast_connections)?;
    let slow = slow.finish(&slow_url, settings.slow_connections)?;
    Ok(WrkPhase {
        restarts: restart_figures(&restarts),
        requests: fast.requests + slow.requests,
        failed: fast.failed() + slow.failed(),
        requests_per_second: fast.requests_per_second + slow.requests_per_second,
        fast,
        slow,
    })
}

/// The own client under restarts, and the same client for as long against the baseline.
fn client_phase(
    master: &mut Master,
    baseline: &BaselineProcess,
    protocol: Protocol,
    settings: &Settings,
    epoch: Instant,
) -> anyhow::Result<ClientPhase> {
    let spec = LoadSpec {
        addr: master.addr,
        protocol,
        fast_connections: settings.connections - settings.slow_connections,
        slow_connections: settings.slow_connections,
        slow_path: settings.slow_path.clone(),
        timeout: REQUEST_TIMEOUT,
        threads: settings.client_threads,
    };
    let plain_spec = LoadSpec {
        addr: baseline.addr,
        ..spec.clone()
    };
    // The baseline runs half before and half after, so a drift in what else the machine is
    // doing weighs on both sides alike. The phase's length is known only afterwards: the first
    // half uses an estimate, the second makes the total equal.
    let expected = (WARMUP
        + (Duration::from_millis(settings.gap_ms) + TYPICAL_WINDOW) * settings.restarts as u32)
        .max(Duration::from_secs_f64(settings.min_phase_seconds));
    let before = plain_load(&plain_spec, expected / 2, epoch)?;

    say(&format!(
        "hyper client ({}) under restarts",
        protocol.label()
    ));
    let load = Load::start(spec.clone(), epoch);
    let restarts = drive_restarts(master, settings, epoch, protocol.label())?;
    let under_handover = load.finish()?;
    let seconds = under_handover.stopped - under_handover.started;

    let rest = seconds
        .saturating_sub(before.stopped - before.started)
        .max(Duration::from_millis(500));
    let after = plain_load(&plain_spec, rest, epoch)?;
    let no_restart = steady_comparison(&spec, &plain_spec, settings, epoch)?;
    Ok(analyse(
        protocol,
        under_handover,
        &restarts,
        &[before, after],
        no_restart,
    ))
}

/// Alternating rounds against plain hyper and the handover worker, with no restart, so that
/// the only difference left is handover itself (and drift on the machine weighs on both).
fn steady_comparison(
    handover: &LoadSpec,
    plain: &LoadSpec,
    settings: &Settings,
    epoch: Instant,
) -> anyhow::Result<SteadyComparison> {
    say(&format!(
        "hyper client ({}), no restart: {} rounds of plain hyper, then handover",
        handover.protocol.label(),
        settings.steady_rounds
    ));
    let round = Duration::from_secs_f64(settings.steady_round_seconds);
    let (mut plain_runs, mut handover_runs) = (Vec::new(), Vec::new());
    for _ in 0..settings.steady_rounds {
        plain_runs.push(timed_load(plain, round, epoch)?);
        handover_runs.push(timed_load(handover, round, epoch)?);
    }
    let (plain, handover) = (throughput(&plain_runs), throughput(&handover_runs));
    Ok(SteadyComparison {
        ratio: handover.requests_per_second / plain.requests_per_second.max(1e-9),
        handover,
        plain,
    })
}

/// Requests per second over several runs: answered requests over their summed durations.
fn throughput(runs: &[LoadResult]) -> ThroughputRun {
    let seconds: f64 = runs
        .iter()
        .map(|p| (p.stopped - p.started).as_secs_f64())
        .sum();
    let records = || runs.iter().flat_map(|p| p.records.iter());
    let ok = records().filter(|r| r.outcome == Outcome::Ok).count() as u64;
    ThroughputRun {
        seconds,
        requests: records().count() as u64,
        ok,
        failed: records().filter(|r| r.outcome.failed()).count() as u64,
        requests_per_second: ok as f64 / seconds.max(1e-9),
    }
}

/// The load against the baseline server for `duration`.
fn plain_load(spec: &LoadSpec, duration: Duration, epoch: Instant) -> anyhow::Result<LoadResult> {
    say(&format!(
        "hyper client ({}) against plain hyper for {:.1} s",
        spec.protocol.label(),
        duration.as_secs_f64()
    ));
    timed_load(spec, duration, epoch)
}

/// The load against `spec.addr` for `duration`.
fn timed_load(spec: &LoadSpec, duration: Duration, epoch: Instant) -> anyhow::Result<LoadResult> {
    let load = Load::start(spec.clone(), epoch);
    std::thread::sleep(duration);
    load.finish()
}

fn analyse(
    protocol: Protocol,
    run: LoadResult,
    restarts: &[Restart],
    plain: &[LoadResult],
    no_restart: SteadyComparison,
) -> ClientPhase {
    let windows = Windows::new(restarts.iter().map(|r| r.window(RESTART_LIMIT)));
    let started_us = run.started.as_micros() as u64;
    let stopped_us = run.stopped.as_micros() as u64;
    let ramp_end_us = started_us + RAMP_UP.as_micros() as u64;
    let seconds = (run.stopped - run.started).as_secs_f64();

    let mut failures = Failures::default();
    let (mut ok, mut refused_unsent, mut unsent, mut slow_ok, mut ok_outside) = (0, 0, 0, 0, 0);
    let mut pids = HashSet::new();
    let (mut steady, mut in_windows) = (Vec::new(), Vec::new());
    let buckets = ((stopped_us - started_us) / CHART_BUCKET_US + 1) as usize;
    let mut per_bucket: Vec<Vec<u64>> = vec![Vec::new(); buckets];
    for record in &run.records {
        match record.outcome {
            Outcome::Ok => ok += 1,
            Outcome::RefusedUnsent => refused_unsent += 1,
            Outcome::Unsent => unsent += 1,
            Outcome::Connect => failures.connect += 1,
            Outcome::Request => failures.request += 1,
            Outcome::Body => failures.body += 1,
            Outcome::Timeout => failures.timeout += 1,
            Outcome::Status => failures.non_2xx += 1,
        }
        if record.outcome != Outcome::Ok {
            continue;
        }
        pids.insert(record.pid);
        let inside = windows.contains(record.start_us);
        if !inside {
            ok_outside += 1;
        }
        if record.slow {
            slow_ok += 1;
            continue;
        }
        if inside {
            in_windows.push(record.latency_us);
        } else if record.start_us >= ramp_end_us {
            steady.push(record.latency_us);
        }
        let bucket = (record.start_us.saturating_sub(started_us) / CHART_BUCKET_US) as usize;
        if let Some(list) = per_bucket.get_mut(bucket) {
            list.push(record.latency_us);
        }
    }
    let chart = Chart {
        buckets: per_bucket
            .into_iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(index, list)| {
                let d = Dist::from_micros(list);
                Bucket {
                    t: (index as u64 * CHART_BUCKET_US) as f64 / 1e6,
                    p50_ms: d.p50_ms,
                    p99_ms: d.p99_ms,
                    max_ms: d.max_ms,
                }
            })
            .collect(),
        restarts: restarts
            .iter()
            .map(|r| (r.signal.saturating_sub(run.started)).as_secs_f64())
            .collect(),
        seconds,
    };

    let baseline = throughput(plain);
    let rps = ok as f64 / seconds.max(1e-9);
    let outside_seconds = seconds - windows.covered_seconds(started_us, stopped_us);
    let rps_outside = ok_outside as f64 / outside_seconds.max(1e-9);
    let ratio = |value: f64| value / baseline.requests_per_second.max(1e-9);
    ClientPhase {
        protocol: protocol.label().into(),
        restarts: restart_figures(restarts),
        seconds,
        requests: run.records.len() as u64,
        ok,
        failed: failures.total(),
        failures,
        refused_unsent,
        unsent,
        slow_ok,
        workers_seen: pids.len(),
        error_samples: run.errors,
        latency_steady: Dist::from_micros(steady),
        latency_in_windows: Dist::from_micros(in_windows),
        requests_per_second: rps,
        requests_per_second_outside_windows: rps_outside,
        throughput_ratio: ratio(rps),
        throughput_ratio_outside_windows: ratio(rps_outside),
        steady: no_restart,
        baseline,
        chart,
    }
}

/// Times `settings.upgrade_repetitions` upgrades through the file fetcher: a new binary (the
/// live one plus a few bytes, so a new hash) is written under a temporary name and renamed to
/// `<live>.next`; the clock runs from the rename until a fresh connection is answered by a
/// worker with the new hash.
fn upgrade_phase(
    polling: bool,
    hello: &Path,
    scratch: &Path,
    logs: &Path,
    settings: &Settings,
) -> anyhow::Result<(UpgradePhase, Master)> {
    let mode = if polling { "polling" } else { "inotify" };
    say(&format!("upgrades with {mode}"));
    let dir = scratch.join(mode);
    let next = dir.join("hello.next");
    // With inotify the poll interval is long, so what is measured is the inotify path.
    let interval = if polling {
        POLL_INTERVAL
    } else {
        Duration::from_secs(30)
    };
    let extra_toml = format!(
        "fetcher = \"file\"\n\n[upgrade]\ninterval = \"{}ms\"\nprobation = \"{}ms\"\n\n\
         [file]\npath = \"{}\"\npoll_only = {polling}\n",
        interval.as_millis(),
        PROBATION.as_millis(),
        next.display()
    );
    let spec = MasterSpec {
        name: mode,
        worker_threads: settings.server_threads,
        drain_timeout: DRAIN_TIMEOUT,
        extra_toml,
    };
    let master = Master::start(&spec, hello, &dir, logs)?;
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for rep in 0..settings.upgrade_repetitions {
        match upgrade_once(&master, &next, rep) {
            Ok(took) => {
                eprint!(
                    "\rbench: [{mode}] upgrade {}/{}: {took:.1?}      ",
                    rep + 1,
                    settings.upgrade_repetitions
                );
                latencies.push(took);
            }
            Err(e) => {
                eprintln!("\nbench: [{mode}] upgrade {} failed: {e:#}", rep + 1);
                failures.push(format!("{e:#}"));
            }
        }
        // The old worker drains, and the master holds the next candidate until probation ends.
        master.wait_single_worker(DRAIN_TIMEOUT + Duration::from_secs(5));
        std::thread::sleep(PROBATION + Duration::from_millis(200));
    }
    eprintln!();
    let phase = UpgradePhase {
        mode: mode.into(),
        poll_interval_ms: interval.as_millis() as u64,
        latencies_ms: latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        latency_ms: Dist::from_durations(latencies.iter().copied()),
        failures,
    };
    Ok((phase, master))
}

fn upgrade_once(master: &Master, next: &Path, rep: usize) -> anyhow::Result<Duration> {
    let mut bytes = std::fs::read(&master.binary)
        .with_context(|| format!("reading {}", master.binary.display()))?;
    // Bytes after the end of an ELF file are ignored when it runs; they only change the hash.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    bytes.extend_from_slice(format!("\nhandover-bench upgrade {rep} {stamp}\n").as_bytes());
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let temporary = next.with_extension("bench-tmp");
    std::fs::write(&temporary, &bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
    let landed = Instant::now();
    std::fs::rename(&temporary, next)
        .with_context(|| format!("renaming {} to {}", temporary.display(), next.display()))?;
    let deadline = landed + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(answer) = master.probe() {
            if sha256.starts_with(&answer.sha256) && answer.sha256.len() >= 12 {
                return Ok(landed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "no worker answered with sha256 {} within 30 s; {} ends:\n{}",
        &sha256[..12],
        master.log().display(),
        procs::tail(master.log(), 10)
    )
}

/// The master's footprint at rest (file fetcher polling), then across the soak.
fn master_phase(
    master: &mut Master,
    settings: &Settings,
    epoch: Instant,
) -> anyhow::Result<MasterFigures> {
    let pid = master.pid();
    let unreadable = || anyhow::anyhow!("cannot read /proc/{pid}: did the master exit?");
    say(&format!(
        "master at rest for {} s",
        IDLE_WINDOW.as_secs_f64()
    ));
    std::thread::sleep(Duration::from_secs(1));
    let rss_kib_idle = procs::rss_kib(pid).ok_or_else(unreadable)?;
    let cpu_before = procs::cpu_seconds(pid).ok_or_else(unreadable)?;
    let idle_started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu_after = procs::cpu_seconds(pid).ok_or_else(unreadable)?;
    let idle_window_seconds = idle_started.elapsed().as_secs_f64();
    let idle_cpu_seconds = cpu_after - cpu_before;

    say(&format!("soak: {} hand-overs", settings.soak));
    let fds_before = procs::fd_count(pid).ok_or_else(unreadable)?;
    let rss_kib_before = procs::rss_kib(pid).ok_or_else(unreadable)?;
    let mut restarts = Vec::with_capacity(settings.soak);
    let mut rss_kib_samples = Vec::new();
    let tenth = (settings.soak / 10).max(1);
    for index in 0..settings.soak {
        restarts.push(master.restart(epoch, RESTART_LIMIT)?);
        if (index + 1) % tenth == 0 {
            rss_kib_samples.push((index + 1, procs::rss_kib(pid).ok_or_else(unreadable)?));
        }
        if (index + 1) % 10 == 0 || index + 1 == settings.soak {
            eprint!("\rbench: [soak] {}/{}      ", index + 1, settings.soak);
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    // Let the last old worker's pipes close before counting.
    std::thread::sleep(Duration::from_millis(200));
    let figures = restart_figures(&restarts);
    let fds_after = procs::fd_count(pid).ok_or_else(unreadable)?;
    let rss_kib_after = procs::rss_kib(pid).ok_or_else(unreadable)?;

    say(&format!(
        "{} master upgrades in place",
        settings.master_upgrades
    ));
    let worker_before = master.probe()?.pid;
    let mut exec_times = Vec::with_capacity(settings.master_upgrades);
    for _ in 0..settings.master_upgrades {
        exec_times.push(master.upgrade_in_place(Duration::from_secs(20))?);
    }
    let worker_after = master.probe()?.pid;
    Ok(MasterFigures {
        poll_interval_ms: POLL_INTERVAL.as_millis() as u64,
        rss_kib_idle,
        idle_window_seconds,
        idle_cpu_seconds,
        idle_cpu_percent: idle_cpu_seconds / idle_window_seconds * 100.0,
        idle_cpu_resolution_percent: 100.0 / procs::ticks_per_second() / idle_window_seconds,
        soak: SoakFigures {
            handovers: restarts.len(),
            incomplete: figures.incomplete,
            fds_before,
            fds_after,
            rss_kib_before,
            rss_kib_after,
            rss_kib_samples,
            handover_ms: figures.handover_ms,
        },
        upgrades_in_place: InPlaceFigures {
            count: exec_times.len(),
            exec_and_adopt_ms: Dist::from_durations(exec_times),
            worker_kept: worker_before == worker_after,
            fds_before: fds_after,
            fds_after: procs::fd_count(pid).ok_or_else(unreadable)?,
            master_pid_kept: master.pid() == pid,
        },
    })
}
