//! Every figure of a run (`results.json`), the README table (`results.md`) and the latency
//! chart (`latency.svg`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::compare::Comparison;
use crate::remote::RemoteRow;
use crate::stats::Dist;
use crate::tables;
use crate::upgrades::Stage;
use crate::wrk::WrkReport;

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    /// None when wrk is not installed (see `wrk_skipped`).
    pub(crate) wrk: Option<WrkPhase>,
    pub(crate) wrk_skipped: Option<String>,
    /// The bench's own hyper client: HTTP/1.1, then HTTP/2.
    pub(crate) client: Vec<ClientPhase>,
    /// SIGUSR2 → first answer from the new worker, over every restart under load.
    pub(crate) handover_time_under_load_ms: Dist,
    /// Where those hand-overs went (master spawn, worker exec, runtime, program), p50.
    pub(crate) handover_breakdown_under_load: Vec<crate::upgrades::Stage>,
    /// The same for the soak's hand-overs, without load.
    pub(crate) handover_breakdown_without_load: Vec<crate::upgrades::Stage>,
    /// File landing → new sha256 answering: inotify, then polling.
    pub(crate) upgrade: Vec<UpgradePhase>,
    pub(crate) master: MasterFigures,
    /// Tableflip and a naive restart under the same load as `wrk` (and the hyper client).
    pub(crate) comparison: Comparison,
    /// Handover under wrk at `big_connections` and `big_restarts` (None without wrk).
    pub(crate) big: Option<WrkPhase>,
    /// Publish → serving through the S3 and GitHub fetchers.
    pub(crate) remote: Vec<RemoteRow>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) date: String,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    /// The bench's own command-line arguments, so the table says how it was made.
    pub(crate) arguments: Vec<String>,
    pub(crate) quick: bool,
    pub(crate) restarts: usize,
    pub(crate) connections: usize,
    /// Of `connections`, how many loop on `slow_path` (the rest on `/`).
    pub(crate) slow_connections: usize,
    pub(crate) slow_path: String,
    /// Runtime threads of each hello worker and of the baseline server.
    pub(crate) server_threads: usize,
    pub(crate) client_threads: usize,
    /// Each load phase lasts at least this long.
    pub(crate) min_phase_seconds: f64,
    /// Load before the first restart of a phase.
    pub(crate) warmup_ms: u64,
    /// Pause after each restart window (steady state between restarts).
    pub(crate) gap_ms: u64,
    pub(crate) request_timeout_ms: u64,
    pub(crate) drain_timeout_ms: u64,
    pub(crate) soak: usize,
    pub(crate) master_upgrades: usize,
    pub(crate) upgrade_repetitions: usize,
    /// Rounds of (plain hyper, handover) with no restart, for the steady-state ratio.
    pub(crate) steady_rounds: usize,
    pub(crate) steady_round_seconds: f64,
    /// Connections and restarts of the big wrk row.
    pub(crate) big_connections: usize,
    pub(crate) big_restarts: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RestartFigures {
    pub(crate) count: usize,
    /// Restarts where no new pid answered, or an old worker was still there, within the limit.
    pub(crate) incomplete: usize,
    /// SIGUSR2 → first answer from a new worker pid (fresh connections).
    pub(crate) handover_ms: Dist,
    /// Every hand-over time, in order.
    pub(crate) handover_samples_ms: Vec<f64>,
    /// SIGUSR2 → every old worker exited.
    pub(crate) window_ms: Dist,
}

#[derive(Debug, Serialize)]
pub(crate) struct WrkPhase {
    pub(crate) restarts: RestartFigures,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) requests_per_second: f64,
    /// Resident memory of the serving processes after the last restart (handover: master
    /// and worker).
    pub(crate) rss_kib: u64,
    /// wrk on `/`.
    pub(crate) fast: WrkReport,
    /// wrk on the slow path.
    pub(crate) slow: WrkReport,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Failures {
    pub(crate) connect: u64,
    pub(crate) request: u64,
    pub(crate) body: u64,
    pub(crate) timeout: u64,
    pub(crate) non_2xx: u64,
}

impl Failures {
    pub(crate) fn total(&self) -> u64 {
        self.connect + self.request + self.body + self.timeout + self.non_2xx
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ThroughputRun {
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) requests_per_second: f64,
}

/// The same client against the handover worker and against plain hyper with no restart at
/// all, in alternating rounds: what handover costs a request when nothing is handed over.
#[derive(Debug, Serialize)]
pub(crate) struct SteadyComparison {
    pub(crate) handover: ThroughputRun,
    pub(crate) plain: ThroughputRun,
    /// handover.requests_per_second / plain.requests_per_second.
    pub(crate) ratio: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClientPhase {
    pub(crate) protocol: String,
    pub(crate) restarts: RestartFigures,
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) failures: Failures,
    /// HTTP/2 requests the client refused unsent after a GOAWAY (not failures).
    pub(crate) refused_unsent: u64,
    /// HTTP/2 streams the server refused after they were sent (its final GOAWAY's last
    /// stream id below them). The drain's goal: 0.
    pub(crate) refused_sent: u64,
    /// Requests hyper handed back unwritten because the connection closed first (not failures).
    pub(crate) unsent: u64,
    pub(crate) slow_ok: u64,
    pub(crate) workers_seen: usize,
    pub(crate) error_samples: Vec<String>,
    /// `GET /` outside restart windows (after the first 500 ms of ramp-up).
    pub(crate) latency_steady: Dist,
    /// `GET /` started inside a restart window (SIGUSR2 → old worker gone).
    pub(crate) latency_in_windows: Dist,
    pub(crate) requests_per_second: f64,
    pub(crate) requests_per_second_outside_windows: f64,
    /// The same client, connections and duration against plain hyper, no handover (half
    /// before the restarts, half after).
    pub(crate) baseline: ThroughputRun,
    /// requests_per_second / baseline.requests_per_second.
    pub(crate) throughput_ratio: f64,
    pub(crate) throughput_ratio_outside_windows: f64,
    pub(crate) steady: SteadyComparison,
    #[serde(skip)]
    pub(crate) chart: Chart,
}

/// Latency over time for the chart: per 100 ms bucket, and the restart signals.
#[derive(Debug, Default)]
pub(crate) struct Chart {
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) restarts: Vec<f64>,
    pub(crate) seconds: f64,
}

/// Latency of the `GET /` requests started in one 100 ms bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    /// Seconds since the phase started.
    pub(crate) t: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct UpgradePhase {
    pub(crate) mode: String,
    pub(crate) poll_interval_ms: u64,
    pub(crate) latencies_ms: Vec<f64>,
    pub(crate) latency_ms: Dist,
    pub(crate) failures: Vec<String>,
    /// The p50 of each stage the master logged (`upgrade stages: …`); empty if it logs none.
    pub(crate) breakdown: Vec<Stage>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct MasterFigures {
    pub(crate) poll_interval_ms: u64,
    pub(crate) rss_kib_idle: u64,
    /// Its proportional share of those pages (shared ones count in part).
    pub(crate) pss_kib_idle: u64,
    /// Its own anonymous memory.
    pub(crate) anon_kib_idle: u64,
    pub(crate) idle_window_seconds: f64,
    pub(crate) idle_cpu_seconds: f64,
    /// Percent of one core.
    pub(crate) idle_cpu_percent: f64,
    /// One clock tick over the window, in percent of a core: 0 ticks means "less than this".
    pub(crate) idle_cpu_resolution_percent: f64,
    pub(crate) soak: SoakFigures,
    pub(crate) upgrades_in_place: InPlaceFigures,
}

/// The master re-executing itself (SIGUSR1), its workers adopted.
#[derive(Debug, Default, Serialize)]
pub(crate) struct InPlaceFigures {
    pub(crate) count: usize,
    /// From just before `execve` to the serving worker adopted, as the new master logs it.
    pub(crate) exec_and_adopt_ms: Dist,
    /// The worker that served before the first upgrade served after the last.
    pub(crate) worker_kept: bool,
    pub(crate) master_pid_kept: bool,
    pub(crate) fds_before: usize,
    pub(crate) fds_after: usize,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct SoakFigures {
    pub(crate) handovers: usize,
    pub(crate) incomplete: usize,
    pub(crate) fds_before: usize,
    pub(crate) fds_after: usize,
    /// Both read with the master idle past its trim (a few seconds without hand-overs).
    pub(crate) rss_kib_before: u64,
    pub(crate) rss_kib_after: u64,
    /// (hand-overs done, anonymous memory) at every tenth of the soak: a leak keeps climbing
    /// to the end, allocator warm-up levels off. Anonymous, because the resident set also
    /// holds code pages that come and go with the idle trim.
    pub(crate) anon_kib_samples: Vec<(usize, u64)>,
    pub(crate) anon_kib_after: u64,
    /// Hand-over time without load.
    pub(crate) handover_ms: Dist,
}

/// Writes results.json, results.md and latency.svg into `out`; returns the markdown.
pub(crate) fn write_all(results: &Results, out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(out.join("results.json"), json + "\n")?;
    let markdown = markdown(results);
    std::fs::write(out.join("results.md"), &markdown)?;
    crate::chart::draw(results, &out.join("latency.svg")).context("drawing latency.svg")?;
    Ok(markdown)
}

pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn markdown(r: &Results) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut md = String::new();
    let _ = writeln!(md, "### Benchmarks\n");
    let _ = writeln!(
        md,
        "`cargo run --release --example bench{}` on 127.0.0.1, {} × {}, Linux {}, {}.  ",
        if s.arguments.is_empty() {
            String::new()
        } else {
            format!(" -- {}", s.arguments.join(" "))
        },
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.date
    );
    let _ = writeln!(
        md,
        "{} keep-alive connections ({} of them on `{}`), {} restarts (SIGUSR2) per column, \
         {} runtime threads per worker; latency figures are p50 / p99 / max of `GET /`.\n",
        s.connections, s.slow_connections, s.slow_path, s.restarts, s.server_threads
    );

    let wrk = r.wrk.as_ref();
    let h1 = r.client.iter().find(|c| c.protocol == "HTTP/1.1");
    let h2 = r.client.iter().find(|c| c.protocol == "HTTP/2");
    let dash = || "–".to_string();
    let row = |md: &mut String, label: &str, a: String, b: String, c: String| {
        let _ = writeln!(md, "| {label} | {a} | {b} | {c} |");
    };
    let client = |phase: Option<&ClientPhase>, f: &dyn Fn(&ClientPhase) -> String| {
        phase.map_or_else(dash, f)
    };
    let _ = writeln!(
        md,
        "| Under restarts | wrk, HTTP/1.1 | hyper client, HTTP/1.1 | h2 client, HTTP/2 |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    row(
        &mut md,
        "restarts",
        wrk.map_or_else(
            || "skipped (no wrk)".into(),
            |w| w.restarts.count.to_string(),
        ),
        client(h1, &|c| c.restarts.count.to_string()),
        client(h2, &|c| c.restarts.count.to_string()),
    );
    row(
        &mut md,
        "requests",
        wrk.map_or_else(dash, |w| thousands(w.requests)),
        client(h1, &|c| thousands(c.requests)),
        client(h2, &|c| thousands(c.requests)),
    );
    row(
        &mut md,
        "**failed requests**",
        wrk.map_or_else(dash, |w| format!("**{}**", w.failed)),
        client(h1, &|c| format!("**{}**", c.failed)),
        client(h2, &|c| format!("**{}**", c.failed)),
    );
    row(
        &mut md,
        "**HTTP/2 streams sent, then refused** (above the final GOAWAY)",
        dash(),
        dash(),
        client(h2, &|c| format!("**{}**", c.refused_sent)),
    );
    row(
        &mut md,
        "not sent, so not failed: declined after GOAWAY / handed back unwritten",
        dash(),
        client(h1, &|c| format!("{} / {}", c.refused_unsent, c.unsent)),
        client(h2, &|c| format!("{} / {}", c.refused_unsent, c.unsent)),
    );
    row(
        &mut md,
        "hand-over time (SIGUSR2 → new pid answers)",
        wrk.map_or_else(dash, |w| w.restarts.handover_ms.cell()),
        client(h1, &|c| c.restarts.handover_ms.cell()),
        client(h2, &|c| c.restarts.handover_ms.cell()),
    );
    row(
        &mut md,
        "restart window (SIGUSR2 → old worker gone)",
        wrk.map_or_else(dash, |w| w.restarts.window_ms.cell()),
        client(h1, &|c| c.restarts.window_ms.cell()),
        client(h2, &|c| c.restarts.window_ms.cell()),
    );
    row(
        &mut md,
        "latency, steady state",
        wrk.map_or_else(dash, |w| {
            format!(
                "avg {} / max {} (whole run)",
                w.fast.latency_avg, w.fast.latency_max
            )
        }),
        client(h1, &|c| c.latency_steady.cell()),
        client(h2, &|c| c.latency_steady.cell()),
    );
    row(
        &mut md,
        "latency, inside restart windows",
        dash(),
        client(h1, &|c| c.latency_in_windows.cell()),
        client(h2, &|c| c.latency_in_windows.cell()),
    );
    row(
        &mut md,
        "throughput under handover, req/s",
        wrk.map_or_else(dash, |w| thousands(w.requests_per_second as u64)),
        client(h1, &|c| thousands(c.requests_per_second as u64)),
        client(h2, &|c| thousands(c.requests_per_second as u64)),
    );
    row(
        &mut md,
        "plain hyper, no handover, req/s",
        dash(),
        client(h1, &|c| thousands(c.baseline.requests_per_second as u64)),
        client(h2, &|c| thousands(c.baseline.requests_per_second as u64)),
    );
    row(
        &mut md,
        "throughput ratio (target ≥ 0.98); outside windows",
        dash(),
        client(h1, &|c| {
            format!(
                "{:.3}; {:.3}",
                c.throughput_ratio, c.throughput_ratio_outside_windows
            )
        }),
        client(h2, &|c| {
            format!(
                "{:.3}; {:.3}",
                c.throughput_ratio, c.throughput_ratio_outside_windows
            )
        }),
    );
    let steady = |c: &ClientPhase| {
        format!(
            "{} / {} req/s = **{:.3}**",
            thousands(c.steady.handover.requests_per_second as u64),
            thousands(c.steady.plain.requests_per_second as u64),
            c.steady.ratio
        )
    };
    row(
        &mut md,
        &format!(
            "no restart: handover / plain hyper ({} alternating rounds of {} s each)",
            r.settings.steady_rounds, r.settings.steady_round_seconds
        ),
        dash(),
        client(h1, &steady),
        client(h2, &steady),
    );

    tables::comparison(&mut md, r);

    tables::upgrades_and_master(&mut md, r);
    md
}
