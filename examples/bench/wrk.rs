//! Load from wrk (HTTP/1.1 only), the independent check of "no failed request".
//!
//! wrk runs with an upper bound on its duration and is stopped with SIGINT once the restarts
//! are done; it prints its summary on SIGINT. Its failures are the "Socket errors" line
//! (connect, read, write, timeout) and the "Non-2xx or 3xx responses" line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::procs::Guarded;

/// Whether `wrk` is on the PATH.
pub(crate) fn available() -> bool {
    on_path("wrk")
}

/// Whether an executable `name` is on the PATH.
pub(crate) fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(name);
            candidate.is_file()
                && std::fs::metadata(&candidate).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    })
}

pub(crate) const INSTALL_HINT: &str =
    "wrk is not installed: skipping the wrk part (Debian/Ubuntu: `sudo apt-get install -y wrk`)";

/// A wrk process; killed if dropped before [`Wrk::finish`].
pub(crate) struct Wrk {
    process: Guarded,
    output: PathBuf,
}

/// What wrk printed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WrkReport {
    pub(crate) url: String,
    pub(crate) connections: usize,
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    pub(crate) requests_per_second: f64,
    pub(crate) connect_errors: u64,
    pub(crate) read_errors: u64,
    pub(crate) write_errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) non_2xx_3xx: u64,
    /// wrk's own latency average and maximum, as it prints them.
    pub(crate) latency_avg: String,
    pub(crate) latency_max: String,
    pub(crate) output: String,
}

impl WrkReport {
    pub(crate) fn failed(&self) -> u64 {
        self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
            + self.non_2xx_3xx
    }
}

impl Wrk {
    pub(crate) fn start(
        url: &str,
        threads: usize,
        connections: usize,
        max_duration: Duration,
        timeout: Duration,
        output: &Path,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(output)
            .with_context(|| format!("creating {}", output.display()))?;
        let mut command = Command::new("wrk");
        command
            .arg("-t")
            .arg(threads.clamp(1, connections.max(1)).to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{}s", max_duration.as_secs().max(1)))
            .arg("--timeout")
            .arg(format!("{}s", timeout.as_secs().max(1)))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let process = Guarded::spawn(
            &mut command,
            libc::SIGKILL,
            libc::SIGINT,
            Duration::from_secs(5),
        )
        .context("starting wrk")?;
        Ok(Self {
            process,
            output: output.to_path_buf(),
        })
    }

    /// Stops wrk with SIGINT (it then prints its summary) and parses the summary.
    pub(crate) fn finish(mut self, url: &str, connections: usize) -> anyhow::Result<WrkReport> {
        let _ = self.process.signal(libc::SIGINT);
        if !self.process.wait_exit(Duration::from_secs(10)) {
            bail!("wrk did not stop within 10 s of SIGINT");
        }
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        parse(&text, url, connections).with_context(|| format!("parsing wrk's output:\n{text}"))
    }
}

fn parse(text: &str, url: &str, connections: usize) -> anyhow::Result<WrkReport> {
    let mut report = WrkReport {
        url: url.to_string(),
        connections,
        requests: 0,
        seconds: 0.0,
        requests_per_second: 0.0,
        connect_errors: 0,
        read_errors: 0,
        write_errors: 0,
        timeouts: 0,
        non_2xx_3xx: 0,
        latency_avg: String::new(),
        latency_max: String::new(),
        output: text.to_string(),
    };
    let mut saw_summary = false;
    for line in text.lines().map(str::trim) {
        if let Some((count, rest)) = line.split_once(" requests in ") {
            // "2382 requests in 2.11s, 6.71MB read"
            report.requests = count.trim().parse()?;
            let seconds = rest.split(',').next().unwrap_or("");
            report.seconds = parse_duration_seconds(seconds).unwrap_or(0.0);
            saw_summary = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 12, write 0, timeout 3"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse()?;
                match kind {
                    "connect" => report.connect_errors = count,
                    "read" => report.read_errors = count,
                    "write" => report.write_errors = count,
                    "timeout" => report.timeouts = count,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx_3xx = rest.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_second = rest.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("Latency") {
            // "Latency     1.98ms    2.01ms  26.17ms   92.44%": avg, stdev, max, +/- stdev
            let columns: Vec<&str> = rest.split_whitespace().collect();
            report.latency_avg = columns.first().unwrap_or(&"").to_string();
            report.latency_max = columns.get(2).unwrap_or(&"").to_string();
        }
    }
    if !saw_summary {
        bail!("no \"requests in\" summary line");
    }
    Ok(report)
}

/// wrk's durations: `2.11s`, `350.12ms`, `1.00m`.
fn parse_duration_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_summary_with_errors() {
        let text = "Running 30s test @ http://127.0.0.1:1/\n  2 threads and 8 connections\n  \
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.98ms    \
                    2.01ms  26.17ms   92.44%\n  2382 requests in 2.11s, 6.71MB read\n  Socket \
                    errors: connect 1, read 12, write 0, timeout 3\n  Non-2xx or 3xx responses: \
                    4\nRequests/sec:   1128.62\n";
        let report = super::parse(text, "u", 8).unwrap();
        assert_eq!(report.requests, 2382);
        assert!((report.seconds - 2.11).abs() < 1e-9);
        assert_eq!(report.failed(), 1 + 12 + 3 + 4);
        assert_eq!(report.latency_max, "26.17ms");
    }
}
