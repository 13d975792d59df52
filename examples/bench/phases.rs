//! The restart phases: a load (wrk, or the bench's own hyper client) runs while a server is
//! restarted again and again, and what the load saw is summed up.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::baseline::BaselineProcess;
use crate::client::{Load, LoadResult, LoadSpec, Outcome, Protocol};
use crate::master::{Master, Restart};
use crate::report::{
    Bucket, Chart, ClientPhase, Failures, RestartFigures, Settings, SteadyComparison,
    ThroughputRun, WrkPhase,
};
use crate::stats::{Dist, Windows};
use crate::{procs, say, wrk};
use crate::{CHART_BUCKET_US, RAMP_UP, REQUEST_TIMEOUT, RESTART_LIMIT, TYPICAL_WINDOW, WARMUP};

/// A server the bench can restart and time: a handover master (SIGUSR2), tableflip (SIGHUP),
/// or plain hyper stopped and started again.
pub(crate) trait Restartable {
    fn addr(&self) -> SocketAddr;
    /// One restart, timed from the signal (or the stop) until a new pid answers, then until
    /// the old process is gone; gives up on either after `limit`.
    fn restart(&mut self, epoch: Instant, limit: Duration) -> anyhow::Result<Restart>;
    /// Resident memory of every process that serves now, in KiB.
    fn rss_kib(&self) -> u64;
}

impl Restartable for Master {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn restart(&mut self, epoch: Instant, limit: Duration) -> anyhow::Result<Restart> {
        Master::restart(self, epoch, limit)
    }

    fn rss_kib(&self) -> u64 {
        std::iter::once(self.pid())
            .chain(self.workers())
            .filter_map(procs::rss_kib)
            .sum()
    }
}

/// How many restarts a phase does, and on how many connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) restarts: usize,
    pub(crate) connections: usize,
}

impl Shape {
    pub(crate) fn of(settings: &Settings) -> Self {
        Self {
            restarts: settings.restarts,
            connections: settings.connections,
        }
    }

    /// Of `connections`, 1 in 16 (at least one) loops on the slow path.
    pub(crate) fn slow(&self) -> usize {
        (self.connections / 16).max(1)
    }
}

/// Restarts `count` times while a load runs (started by the caller), each followed by `gap`,
/// and keeps the load going until the phase has lasted `settings.min_phase_seconds`.
pub(crate) fn drive_restarts(
    server: &mut dyn Restartable,
    count: usize,
    settings: &Settings,
    epoch: Instant,
    tag: &str,
) -> anyhow::Result<Vec<Restart>> {
    let phase_start = Instant::now();
    std::thread::sleep(WARMUP);
    let mut restarts = Vec::with_capacity(count);
    for index in 0..count {
        let restart = server.restart(epoch, RESTART_LIMIT)?;
        let took = restart
            .handover_time()
            .map_or_else(|| "no new worker!".into(), |d| format!("{d:.1?}"));
        eprint!(
            "\rbench: [{tag}] restart {}/{}: {took}      ",
            index + 1,
            count
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

pub(crate) fn restart_figures(restarts: &[Restart]) -> RestartFigures {
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

/// wrk on `/` plus wrk on the slow path, with `shape.restarts` restarts of `server`; `tag`
/// names the progress line and the log files.
pub(crate) fn wrk_phase(
    server: &mut dyn Restartable,
    shape: Shape,
    settings: &Settings,
    epoch: Instant,
    logs: &Path,
    tag: &str,
) -> anyhow::Result<WrkPhase> {
    say(&format!(
        "[{tag}] wrk (HTTP/1.1), {} connections, {} restarts",
        shape.connections, shape.restarts
    ));
    // An upper bound only: wrk is stopped with SIGINT as soon as the restarts are done.
    let bound = WARMUP
        + (RESTART_LIMIT + Duration::from_millis(settings.gap_ms)) * shape.restarts as u32
        + Duration::from_secs_f64(settings.min_phase_seconds)
        + Duration::from_secs(10);
    let addr = server.addr();
    let fast_url = format!("http://{addr}/");
    let slow_url = format!("http://{addr}{}", settings.slow_path);
    let slow_connections = shape.slow();
    let fast_connections = shape.connections - slow_connections;
    let fast = wrk::Wrk::start(
        &fast_url,
        settings.client_threads,
        fast_connections,
        bound,
        REQUEST_TIMEOUT,
        &logs.join(format!("wrk-{tag}-fast.txt")),
    )?;
    let slow = wrk::Wrk::start(
        &slow_url,
        1,
        slow_connections,
        bound,
        REQUEST_TIMEOUT,
        &logs.join(format!("wrk-{tag}-slow.txt")),
    )?;
    let restarts = drive_restarts(server, shape.restarts, settings, epoch, tag)?;
    let fast = fast.finish(&fast_url, fast_connections)?;
    let slow = slow.finish(&slow_url, slow_connections)?;
    Ok(WrkPhase {
        restarts: restart_figures(&restarts),
        requests: fast.requests + slow.requests,
        failed: fast.failed() + slow.failed(),
        requests_per_second: fast.requests_per_second + slow.requests_per_second,
        rss_kib: server.rss_kib(),
        fast,
        slow,
    })
}

/// The own client under restarts, and the same client for as long against the baseline.
pub(crate) fn client_phase(
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
    let restarts = drive_restarts(master, settings.restarts, settings, epoch, protocol.label())?;
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
pub(crate) fn timed_load(
    spec: &LoadSpec,
    duration: Duration,
    epoch: Instant,
) -> anyhow::Result<LoadResult> {
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
    let (mut ok, mut refused_unsent, mut refused_sent, mut unsent) = (0, 0, 0, 0);
    let (mut slow_ok, mut ok_outside) = (0, 0);
    let mut pids = HashSet::new();
    let (mut steady, mut in_windows) = (Vec::new(), Vec::new());
    let buckets = ((stopped_us - started_us) / CHART_BUCKET_US + 1) as usize;
    let mut per_bucket: Vec<Vec<u64>> = vec![Vec::new(); buckets];
    for record in &run.records {
        match record.outcome {
            Outcome::Ok => ok += 1,
            Outcome::RefusedUnsent => refused_unsent += 1,
            Outcome::RefusedSent => refused_sent += 1,
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
        refused_sent,
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
