//! A handover master running the hello example from its own directory, and one hand-over
//! driven and timed from outside.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::probe;
use crate::procs::{self, Guarded};

/// A running master; stopped (with its workers) when dropped.
pub(crate) struct Master {
    process: Guarded,
    pub(crate) addr: SocketAddr,
    /// The live binary, which upgrades replace.
    pub(crate) binary: PathBuf,
    log: PathBuf,
}

/// Settings of one master, written to its config file.
pub(crate) struct MasterSpec<'a> {
    /// Names the master's directory and log file.
    pub(crate) name: &'a str,
    pub(crate) worker_threads: usize,
    pub(crate) drain_timeout: Duration,
    /// Appended to the config file as is (fetcher and upgrade tables).
    pub(crate) extra_toml: String,
    /// Set in the master's environment (credentials of a fetcher).
    pub(crate) env: Vec<(&'static str, String)>,
}

/// One hand-over as seen from outside, in times since the bench's epoch.
#[derive(Debug, Clone)]
pub(crate) struct Restart {
    pub(crate) signal: Duration,
    /// The first probe answered by a pid that was not a worker before the signal.
    pub(crate) first_new: Option<Duration>,
    /// Every process that was a worker before the signal has exited.
    pub(crate) old_gone: Option<Duration>,
}

impl Restart {
    pub(crate) fn handover_time(&self) -> Option<Duration> {
        Some(self.first_new? - self.signal)
    }

    /// The restart window: from the signal until the old worker is gone (or, if it never went,
    /// until the bench gave up on it).
    pub(crate) fn window(&self, limit: Duration) -> (Duration, Duration) {
        (self.signal, self.old_gone.unwrap_or(self.signal + limit))
    }
}

impl Master {
    /// Copies `hello` into `dir` (upgrades swap the binary on disk, so never run the build
    /// output itself), writes the config and starts the master; returns once it answers.
    pub(crate) fn start(
        spec: &MasterSpec<'_>,
        hello: &Path,
        dir: &Path,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let binary = dir.join("hello");
        std::fs::copy(hello, &binary)
            .with_context(|| format!("copying {} to {}", hello.display(), binary.display()))?;
        let addr = free_port()?;
        let config = dir.join("handover.toml");
        let text = format!(
            "worker_threads = {threads}\nready_timeout = \"10s\"\ndrain_timeout = \"{drain}ms\"\n\
             {extra}\n\n[[listen]]\nname = \"http\"\ntcp = \"{addr}\"\nbacklog = 1024\n",
            threads = spec.worker_threads,
            drain = spec.drain_timeout.as_millis(),
            extra = spec.extra_toml,
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = logs.join(format!("master-{}.log", spec.name));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&binary);
        command
            .env("HANDOVER_CONFIG", &config)
            .env("RUST_LOG", "info")
            .env_remove("PORT")
            .env_remove("HANDOVER_WATCH")
            .env_remove("HELLO_JOB_LOG")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SIGTERM to stop: the master drains and stops its workers. The grace covers a drain.
        let grace = spec.drain_timeout + Duration::from_secs(5);
        let process = Guarded::spawn(&mut command, libc::SIGTERM, libc::SIGTERM, grace)
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut master = Self {
            process,
            addr,
            binary,
            log,
        };
        master.wait_answering(Duration::from_secs(20))?;
        Ok(master)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn workers(&self) -> HashSet<u32> {
        procs::children(self.pid())
    }

    fn wait_answering(&mut self, timeout: Duration) -> anyhow::Result<probe::Answer> {
        let deadline = Instant::now() + timeout;
        loop {
            match probe::get(self.addr, Duration::from_secs(2)) {
                Ok(answer) => return Ok(answer),
                Err(e) if Instant::now() > deadline || self.process.exited() => bail!(
                    "the master did not answer on {} within {timeout:?} ({e}); its log {} ends:\n{}",
                    self.addr,
                    self.log.display(),
                    procs::tail(&self.log, 15)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Who answers a fresh connection now.
    pub(crate) fn probe(&self) -> std::io::Result<probe::Answer> {
        probe::get(self.addr, Duration::from_secs(2))
    }

    /// Sends SIGUSR2 and times the hand-over: until a new pid answers, then until every old
    /// worker has exited. Gives up on either after `limit`.
    pub(crate) fn restart(&mut self, epoch: Instant, limit: Duration) -> anyhow::Result<Restart> {
        let old = self.workers();
        if old.is_empty() {
            bail!(
                "the master has no worker; its log {} ends:\n{}",
                self.log.display(),
                procs::tail(&self.log, 15)
            );
        }
        let sent = Instant::now();
        self.process
            .signal(libc::SIGUSR2)
            .context("sending SIGUSR2 to the master")?;
        let mut restart = Restart {
            signal: sent - epoch,
            first_new: None,
            old_gone: None,
        };
        let deadline = sent + limit;
        while Instant::now() < deadline {
            // Probes that fail (a slow answer under load) are simply tried again: this loop
            // measures when a new worker answers, not whether every probe does.
            if let Ok(answer) = self.probe() {
                if !old.contains(&answer.pid) {
                    restart.first_new = Some(Instant::now() - epoch);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        while Instant::now() < deadline {
            if old.iter().all(|pid| !procs::alive(*pid)) {
                restart.old_gone = Some(Instant::now() - epoch);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(restart)
    }

    /// Waits until the master has exactly one worker (an upgrade's old worker has drained).
    pub(crate) fn wait_single_worker(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.workers().len() == 1 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Sends SIGUSR1 (the master re-executes itself) and waits for the new code's log line;
    /// returns the exec-and-adopt time it reports.
    pub(crate) fn upgrade_in_place(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        const LINE: &str = "master upgraded in place";
        let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
        let before = read(&self.log).matches(LINE).count();
        self.process
            .signal(libc::SIGUSR1)
            .context("sending SIGUSR1 to the master")?;
        let deadline = Instant::now() + timeout;
        loop {
            let log = read(&self.log);
            if let Some(line) = log.lines().filter(|l| l.contains(LINE)).nth(before) {
                let took = line
                    .split_once(" took=")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(parse_debug_duration)
                    .with_context(|| format!("no took= in {line:?}"))?;
                return Ok(took);
            }
            if Instant::now() > deadline || self.process.exited() {
                bail!(
                    "the master did not upgrade in place within {timeout:?}; its log {} ends:\n{}",
                    self.log.display(),
                    procs::tail(&self.log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the master binds it right after).
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?)
}

/// A `Duration` as `{:?}` prints it: `12.5ms`, `950.2µs`, `1.2s`, `80ns`.
pub(crate) fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}
