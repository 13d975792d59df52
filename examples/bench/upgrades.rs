//! The upgrade phases: a new build published (a file landing, an S3 object, a GitHub release)
//! timed until it answers, the stage breakdown the master logs for each upgrade, and the
//! master's own footprint and in-place upgrades.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::master::{parse_debug_duration, Master, MasterSpec};
use crate::phases::restart_figures;
use crate::report::{InPlaceFigures, MasterFigures, Settings, SoakFigures, UpgradePhase};
use crate::stats::Dist;
use crate::{procs, say};
use crate::{DRAIN_TIMEOUT, IDLE_WINDOW, POLL_INTERVAL, PROBATION, RESTART_LIMIT};

/// Times `settings.upgrade_repetitions` upgrades through the file fetcher: a new binary (the
/// live one plus a few bytes, so a new hash) is written under a temporary name and renamed to
/// `<live>.next`; the clock runs from the rename until a fresh connection is answered by a
/// worker with the new hash.
pub(crate) fn upgrade_phase(
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
        env: Vec::new(),
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
        breakdown: stage_breakdown(master.log()),
    };
    Ok((phase, master))
}

fn upgrade_once(master: &Master, next: &Path, rep: usize) -> anyhow::Result<Duration> {
    let (bytes, sha256) = new_build(&master.binary, rep)?;
    let temporary = next.with_extension("bench-tmp");
    std::fs::write(&temporary, &bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
    let landed = Instant::now();
    std::fs::rename(&temporary, next)
        .with_context(|| format!("renaming {} to {}", temporary.display(), next.display()))?;
    wait_serving(master, &sha256, landed, Duration::from_secs(30))
}

/// The live binary plus a few bytes (so a new hash, the same program), and its SHA-256 in hex.
pub(crate) fn new_build(binary: &Path, rep: usize) -> anyhow::Result<(Vec<u8>, String)> {
    let mut bytes =
        std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    // Bytes after the end of an ELF file are ignored when it runs; they only change the hash.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    bytes.extend_from_slice(format!("\nhandover-bench upgrade {rep} {stamp}\n").as_bytes());
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha256))
}

/// Waits until a fresh connection is answered by a worker running `sha256`; returns the time
/// since `published`.
pub(crate) fn wait_serving(
    master: &Master,
    sha256: &str,
    published: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let deadline = published + limit;
    while Instant::now() < deadline {
        if let Ok(answer) = master.probe() {
            if sha256.starts_with(&answer.sha256) && answer.sha256.len() >= 12 {
                return Ok(published.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "no worker answered with sha256 {} within {limit:?}; {} ends:\n{}",
        &sha256[..12],
        master.log().display(),
        procs::tail(master.log(), 10)
    )
}

/// One stage of an upgrade as the master logs it (`upgrade stages: download 3.1ms, …; total
/// 21.0ms`), p50 over the upgrades of a phase.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
}

const STAGES_LINE: &str = "upgrade stages:";
/// What each worker logs when it says it is ready: `exec 2.0ms, runtime 299.0µs, program …`.
const START_UP_LINE: &str = "worker start-up:";

/// The p50 of every stage over the `upgrade stages:` lines in a master's log, in the order
/// the line names them; empty when the master logs no such line.
pub(crate) fn stage_breakdown(log: &Path) -> Vec<Stage> {
    breakdown(log, STAGES_LINE)
}

/// Where hand-overs went, p50 over a master's log: the master's spawn (`spawn=` of its
/// `hand-over complete` lines), then each worker's start-up (exec from the spawn, runtime,
/// program until ready).
pub(crate) fn handover_breakdown(log: &Path) -> Vec<Stage> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let spawns: Vec<Duration> = text
        .lines()
        .filter(|l| l.contains("hand-over complete"))
        .filter_map(|l| l.split_once(" spawn=")?.1.split_whitespace().next())
        .filter_map(parse_debug_duration)
        .collect();
    let mut stages = Vec::new();
    if !spawns.is_empty() {
        let dist = Dist::from_durations(spawns);
        stages.push(Stage {
            name: "master spawn".into(),
            count: dist.count,
            p50_ms: dist.p50_ms,
        });
    }
    stages.extend(breakdown(log, START_UP_LINE));
    stages
}

fn breakdown(log: &Path, marker: &str) -> Vec<Stage> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut stages: Vec<(String, Vec<Duration>)> = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(marker) else {
            continue;
        };
        for part in rest.split([',', ';']) {
            let mut words = part.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            // A field or colour code after the last duration is not part of it.
            let value = value.trim_end_matches(|c: char| !c.is_alphabetic());
            let Some(took) = parse_debug_duration(value) else {
                continue;
            };
            match stages.iter_mut().find(|(n, _)| n == name) {
                Some((_, list)) => list.push(took),
                None => stages.push((name.to_string(), vec![took])),
            }
        }
    }
    stages
        .into_iter()
        .map(|(name, list)| {
            let dist = Dist::from_durations(list);
            Stage {
                name,
                count: dist.count,
                p50_ms: dist.p50_ms,
            }
        })
        .collect()
}

/// The master's footprint at rest (file fetcher polling), then across the soak.
pub(crate) fn master_phase(
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
    let cpu_before = procs::cpu_seconds(pid).ok_or_else(unreadable)?;
    let idle_started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu_after = procs::cpu_seconds(pid).ok_or_else(unreadable)?;
    // At the end of the window: the master trims what it does not need 2 s into being idle.
    let (rss_kib_idle, pss_kib_idle, anon_kib_idle) =
        procs::memory_kib(pid).ok_or_else(unreadable)?;
    let idle_window_seconds = idle_started.elapsed().as_secs_f64();
    let idle_cpu_seconds = cpu_after - cpu_before;

    say(&format!("soak: {} hand-overs", settings.soak));
    let fds_before = procs::fd_count(pid).ok_or_else(unreadable)?;
    let rss_kib_before = procs::rss_kib(pid).ok_or_else(unreadable)?;
    let mut restarts = Vec::with_capacity(settings.soak);
    let mut anon_kib_samples = Vec::new();
    let anon = |pid| procs::memory_kib(pid).map(|(_, _, anon)| anon);
    let tenth = (settings.soak / 10).max(1);
    for index in 0..settings.soak {
        restarts.push(master.restart(epoch, RESTART_LIMIT)?);
        if (index + 1) % tenth == 0 {
            anon_kib_samples.push((index + 1, anon(pid).ok_or_else(unreadable)?));
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
    let anon_kib_after = anon(pid).ok_or_else(unreadable)?;
    // Idle past the master's trim, as for the figure before the soak.
    std::thread::sleep(Duration::from_secs(3));
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
        pss_kib_idle,
        anon_kib_idle,
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
            anon_kib_samples,
            anon_kib_after,
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
