//! Load from nghttp2's `h2load` (HTTP/2, prior knowledge), counting its own errors while the
//! master restarts.
//!
//! h2load does not send a request again: a stream it had queued when a GOAWAY arrived, or one
//! on a connection that ended, is counted by h2load itself as "errored" or "failed", whether or
//! not the server ever saw it. Its figures are printed as h2load prints them; the bench's own
//! h2 client is what tells "declined unsent" from "sent, then refused".

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::phases::{drive_restarts, restart_figures, Restartable};
use crate::procs::Guarded;
use crate::report::{ClientPhase, RestartFigures, Settings};

/// Whether `h2load` is on the PATH.
pub(crate) fn available() -> bool {
    crate::wrk::on_path("h2load")
}

pub(crate) const INSTALL_HINT: &str =
    "h2load is not installed: skipping its row (Debian/Ubuntu: `sudo apt-get install -y nghttp2-client`)";

/// What h2load printed, and the restarts it ran through.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct H2loadReport {
    pub(crate) restarts: RestartFigures,
    pub(crate) connections: usize,
    pub(crate) streams_per_connection: usize,
    pub(crate) total: u64,
    pub(crate) started: u64,
    pub(crate) done: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) errored: u64,
    pub(crate) timeout: u64,
    pub(crate) output: String,
}

/// Runs h2load for the length of `restarts` restarts of `master` (none: a run without restarts
/// of about the same length, the comparison).
pub(crate) fn run(
    master: &mut dyn Restartable,
    restarts: usize,
    settings: &Settings,
    epoch: Instant,
    output: &Path,
) -> anyhow::Result<H2loadReport> {
    let connections = settings.connections.clamp(1, 64);
    let streams = 4;
    let expected = crate::WARMUP
        + (Duration::from_millis(settings.gap_ms) + crate::TYPICAL_WINDOW) * restarts as u32;
    let seconds = expected
        .max(Duration::from_secs_f64(settings.min_phase_seconds))
        .as_secs()
        + 2;
    let file =
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let url = format!("http://{}/", master.addr());
    let mut command = Command::new("h2load");
    command
        .arg("-c")
        .arg(connections.to_string())
        .arg("-m")
        .arg(streams.to_string())
        .arg("-t")
        .arg(settings.client_threads.clamp(1, connections).to_string())
        .arg("-D")
        .arg(seconds.to_string())
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut process = Guarded::spawn(
        &mut command,
        libc::SIGKILL,
        libc::SIGINT,
        Duration::from_secs(5),
    )
    .context("starting h2load")?;
    let tag = if restarts == 0 {
        "h2load, no restart"
    } else {
        "h2load"
    };
    let done = drive_restarts(master, restarts, settings, epoch, tag)?;
    if !process.wait_exit(Duration::from_secs(seconds + 30)) {
        bail!("h2load did not finish its {seconds} s run");
    }
    let text =
        std::fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let mut report = parse(&text).with_context(|| format!("parsing h2load's output:\n{text}"))?;
    report.restarts = restart_figures(&done);
    report.connections = connections;
    report.streams_per_connection = streams;
    Ok(report)
}

/// Reads h2load's "requests:" summary line.
fn parse(text: &str) -> anyhow::Result<H2loadReport> {
    // "requests: 30022 total, 30022 started, 30022 done, 29974 succeeded, 48 failed, 48 errored, 0 timeout"
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("requests:"))
        .context("no \"requests:\" summary line")?;
    let mut report = H2loadReport {
        restarts: RestartFigures::default(),
        connections: 0,
        streams_per_connection: 0,
        total: 0,
        started: 0,
        done: 0,
        succeeded: 0,
        failed: 0,
        errored: 0,
        timeout: 0,
        output: text.to_string(),
    };
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(count), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let count: u64 = count.parse()?;
        match kind {
            "total" => report.total = count,
            "started" => report.started = count,
            "done" => report.done = count,
            "succeeded" => report.succeeded = count,
            "failed" => report.failed = count,
            "errored" => report.errored = count,
            "timeout" => report.timeout = count,
            _ => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_requests_line() {
        let text = "finished in 12.00s, 2501.83 req/s, 80.04KB/s\nrequests: 30022 total, 30022 \
                    started, 30022 done, 29974 succeeded, 48 failed, 48 errored, 0 timeout\n";
        let report = super::parse(text).unwrap();
        assert_eq!(report.total, 30022);
        assert_eq!(report.succeeded, 29974);
        assert_eq!((report.failed, report.errored, report.timeout), (48, 48, 0));
    }
}

/// h2load without restarts, then through `settings.restarts` restarts; empty (with a note on
/// stderr) when h2load is not installed.
pub(crate) fn runs(
    master: &mut dyn Restartable,
    settings: &Settings,
    epoch: Instant,
    logs: &Path,
) -> anyhow::Result<Vec<H2loadReport>> {
    if !available() {
        crate::say(INSTALL_HINT);
        return Ok(Vec::new());
    }
    let plain = run(master, 0, settings, epoch, &logs.join("h2load-plain.txt"))?;
    let restarts = settings.restarts;
    let under = run(master, restarts, settings, epoch, &logs.join("h2load.txt"))?;
    Ok(vec![plain, under])
}

/// The HTTP/2 table (http2.md): the bench's h2 client and h2load, under the same restarts.
pub(crate) fn markdown(client: Option<&ClientPhase>, h2load: &[H2loadReport]) -> String {
    use std::fmt::Write as _;
    let mut md = String::from(
        "| HTTP/2 under restarts | h2 client (no retries) | h2load, no restart | h2load |\n\
         |---|---:|---:|---:|\n",
    );
    let cell = |report: Option<&H2loadReport>, f: &dyn Fn(&H2loadReport) -> String| {
        report.map_or_else(|| "–".to_string(), f)
    };
    let (plain, under) = (h2load.first(), h2load.get(1));
    let dash = || "–".to_string();
    let row = |md: &mut String, label: &str, a: String, b: String, c: String| {
        let _ = writeln!(md, "| {label} | {a} | {b} | {c} |");
    };
    let client_cell = |f: &dyn Fn(&ClientPhase) -> String| client.map_or_else(dash, f);
    row(
        &mut md,
        "restarts",
        client_cell(&|c| c.restarts.count.to_string()),
        "0".into(),
        cell(under, &|r| r.restarts.count.to_string()),
    );
    row(
        &mut md,
        "requests sent (h2load: started)",
        client_cell(&|c| (c.requests - c.refused_unsent - c.unsent).to_string()),
        cell(plain, &|r| r.started.to_string()),
        cell(under, &|r| r.started.to_string()),
    );
    row(
        &mut md,
        "answered 2xx (h2load: succeeded)",
        client_cell(&|c| c.ok.to_string()),
        cell(plain, &|r| r.succeeded.to_string()),
        cell(under, &|r| r.succeeded.to_string()),
    );
    row(
        &mut md,
        "**streams sent, then refused**",
        client_cell(&|c| format!("**{}**", c.refused_sent)),
        dash(),
        dash(),
    );
    row(
        &mut md,
        "**failed** (h2load: errored / failed / timeout)",
        client_cell(&|c| format!("**{}**", c.failed)),
        cell(plain, &|r| {
            format!("{} / {} / {}", r.errored, r.failed, r.timeout)
        }),
        cell(under, &|r| {
            format!("{} / {} / {}", r.errored, r.failed, r.timeout)
        }),
    );
    row(
        &mut md,
        "declined unsent after a GOAWAY (sent again on a new connection)",
        client_cell(&|c| c.refused_unsent.to_string()),
        dash(),
        dash(),
    );
    md
}
