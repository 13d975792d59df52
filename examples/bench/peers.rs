//! The servers handover is compared with under the same restarts: cloudflare/tableflip (a Go
//! demo server, built here from `tableflip/main.go`, upgraded with SIGHUP) and a naive restart
//! (plain hyper stopped with SIGTERM and started again on the same port, SO_REUSEADDR).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::baseline::BaselineProcess;
use crate::master::{free_port, Restart};
use crate::phases::Restartable;
use crate::probe;
use crate::procs::{self, Guarded};

pub(crate) const TABLEFLIP_HINT: &str = "Go or cloudflare/tableflip is not installed: skipping \
     the tableflip column (Debian/Ubuntu: `sudo apt-get install -y golang-go \
     golang-github-cloudflare-tableflip-dev`)";

/// Where Debian installs Go sources for GOPATH builds.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
const DEMO_NAME: &str = "tableflip-demo";

/// Builds the tableflip demo in GOPATH mode (the Go module proxy is not needed); `Err` says
/// why the column is skipped.
pub(crate) fn build_tableflip(scratch: &Path, logs: &Path) -> Result<PathBuf, String> {
    let go = find_on_path("go").ok_or_else(|| TABLEFLIP_HINT.to_string())?;
    let package = Path::new(DEBIAN_GOPATH).join("src/github.com/cloudflare/tableflip");
    if !package.is_dir() {
        return Err(format!(
            "{TABLEFLIP_HINT} ({} is missing)",
            package.display()
        ));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench/tableflip");
    let dir = scratch.join("tableflip");
    let output = dir.join(DEMO_NAME);
    let log = logs.join("tableflip-build.txt");
    let built = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir.join("gopath"))?;
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(go);
        command
            .args(["build", "-o"])
            .arg(&output)
            .arg("main.go")
            .current_dir(&source)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env(
                "GOPATH",
                std::env::join_paths([dir.join("gopath"), DEBIAN_GOPATH.into()])?,
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
            command.env("GOCACHE", dir.join("gocache"));
        }
        let mut build = Guarded::spawn(
            &mut command,
            libc::SIGKILL,
            libc::SIGKILL,
            Duration::from_secs(1),
        )?;
        if !build.wait_exit(Duration::from_secs(180)) {
            bail!("go build took longer than 180 s");
        }
        if !output.is_file() {
            bail!("go build failed");
        }
        Ok(())
    })();
    built.map(|()| output).map_err(|e| {
        format!(
            "building the tableflip demo failed ({e:#}): skipping the tableflip column; {} ends:\n{}",
            log.display(),
            procs::tail(&log, 10)
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The tableflip demo. Each upgrade starts a new process (a child of the old one, which then
/// exits), so the pid that serves changes; every generation exits when the stdin it inherited
/// from the bench closes, and any left after that is killed when this is dropped.
pub(crate) struct Tableflip {
    stdin: Option<ChildStdin>,
    /// The first generation, the bench's own child.
    process: Guarded,
    addr: SocketAddr,
    /// The generation serving now.
    current: u32,
    seen: Vec<u32>,
}

impl Tableflip {
    pub(crate) fn start(binary: &Path, dir: &Path, logs: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr = free_port()?;
        let log = logs.join("tableflip.log");
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary);
        command
            .arg("-addr")
            .arg(addr.to_string())
            .arg("-pidfile")
            .arg(dir.join("tableflip.pid"))
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut process = Guarded::spawn(
            &mut command,
            libc::SIGKILL,
            libc::SIGTERM,
            Duration::from_secs(6),
        )
        .context("starting the tableflip demo")?;
        let stdin = process.stdin();
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            match probe::get(addr, Duration::from_secs(2)) {
                Ok(answer) => break answer,
                Err(e) if Instant::now() > deadline || process.exited() => bail!(
                    "the tableflip demo did not answer on {addr} ({e}); {} ends:\n{}",
                    log.display(),
                    procs::tail(&log, 10)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Ok(Self {
            stdin,
            process,
            addr,
            current: answer.pid,
            seen: vec![answer.pid],
        })
    }
}

impl Restartable for Tableflip {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn restart(&mut self, epoch: Instant, limit: Duration) -> anyhow::Result<Restart> {
        let old = self.current;
        if !procs::runs(old, DEMO_NAME) {
            bail!("the tableflip process {old} is gone");
        }
        let sent = Instant::now();
        procs::send_signal(old, libc::SIGHUP).context("sending SIGHUP to tableflip")?;
        let mut restart = Restart {
            signal: sent - epoch,
            first_new: None,
            old_gone: None,
        };
        let deadline = sent + limit;
        while Instant::now() < deadline {
            if let Ok(answer) = probe::get(self.addr, Duration::from_secs(2)) {
                if answer.pid != old {
                    restart.first_new = Some(Instant::now() - epoch);
                    self.current = answer.pid;
                    self.seen.push(answer.pid);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        while Instant::now() < deadline {
            // Reaps the first generation once it exits (the later ones are not our children).
            let _ = self.process.exited();
            if !procs::alive(old) {
                restart.old_gone = Some(Instant::now() - epoch);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(restart)
    }

    fn rss_kib(&self) -> u64 {
        procs::rss_kib(self.current).unwrap_or(0)
    }
}

impl Drop for Tableflip {
    fn drop(&mut self) {
        // Every generation reads the same stdin and exits at its end.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.seen.iter().any(|p| procs::runs(*p, DEMO_NAME)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in &self.seen {
            if procs::runs(*pid, DEMO_NAME) {
                let _ = procs::send_signal(*pid, libc::SIGKILL);
            }
        }
    }
}

/// Plain hyper with no handover, restarted the way a service without it is: stopped, then
/// started again on the same port.
pub(crate) struct Naive {
    server: Option<BaselineProcess>,
    port: u16,
    threads: usize,
}

impl Naive {
    pub(crate) fn start(threads: usize) -> anyhow::Result<Self> {
        let server = BaselineProcess::start(threads, 0)?;
        Ok(Self {
            port: server.addr.port(),
            server: Some(server),
            threads,
        })
    }
}

impl Restartable for Naive {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn restart(&mut self, epoch: Instant, limit: Duration) -> anyhow::Result<Restart> {
        let sent = Instant::now();
        // SIGTERM, which the plain server does not handle: it exits at once, and its
        // connections with it.
        drop(self.server.take());
        let mut restart = Restart {
            signal: sent - epoch,
            first_new: None,
            old_gone: Some(Instant::now() - epoch),
        };
        let deadline = sent + limit;
        let server = loop {
            match BaselineProcess::start(self.threads, self.port) {
                Ok(server) => break server,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("starting plain hyper again on the same port"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let new = server.pid();
        self.server = Some(server);
        while Instant::now() < deadline {
            if probe::get(self.addr(), Duration::from_secs(2)).is_ok_and(|a| a.pid == new) {
                restart.first_new = Some(Instant::now() - epoch);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(restart)
    }

    fn rss_kib(&self) -> u64 {
        self.server
            .as_ref()
            .and_then(|s| procs::rss_kib(s.pid()))
            .unwrap_or(0)
    }
}
