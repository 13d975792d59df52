//! Test plumbing: a master started from a private copy of an example binary, killed with all
//! its children when the test ends (even by a failed assertion); a plain HTTP getter; and a
//! keep-alive load generator that never retries.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod load;
pub mod run;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A built example binary (cargo builds examples before integration tests).
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with cargo so examples are built",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A master running one of the examples from a private directory.
pub struct Service {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bin: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    file_size_limit: Option<u64>,
}

/// Options for [`Service::start`].
pub struct Options<'a> {
    pub example: &'a str,
    /// Extra TOML appended after the generated `[[listen]]` for `http`.
    pub config: &'a str,
    /// Extra TOML appended to the `http` listener's `[[listen]]` table.
    pub listen: &'a str,
    pub env: Vec<(String, String)>,
    /// RLIMIT_FSIZE for the master and its workers (SIGXFSZ ignored, so writes fail with EFBIG,
    /// as on a full disk).
    pub file_size_limit: Option<u64>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            example: "hello",
            config: "",
            listen: "",
            env: Vec::new(),
            file_size_limit: None,
        }
    }
}

impl Service {
    pub fn start(options: Options<'_>) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(options.example);
        std::fs::copy(example(options.example), &bin).unwrap();
        let port = free_port();
        let config_path = dir.path().join("handover.toml");
        // Defaults suited to tests, unless the test sets the key itself.
        let defaults: String = [
            ("ready_timeout", "\"5s\""),
            ("drain_timeout", "\"10s\""),
            ("idle_grace", "\"500ms\""),
        ]
        .iter()
        .filter(|(key, _)| !options.config.contains(&format!("{key} =")))
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
        let config = format!(
            "{defaults}{}\n[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{port}\"\n{}\n",
            options.config, options.listen
        );
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("master.log");
        let mut service = Service {
            child: None,
            dir,
            port,
            bin,
            log,
            env: options.env,
            file_size_limit: options.file_size_limit,
        };
        service.spawn_master();
        service
    }

    /// Starts the master (again) on the same directory, binary and config.
    pub fn spawn_master(&mut self) {
        assert!(self.child.is_none(), "a master is already running");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(&self.bin);
        command
            .env("HANDOVER_CONFIG", self.dir.path().join("handover.toml"))
            .env("RUST_LOG", "info,handover=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        if let Some(limit) = self.file_size_limit {
            use std::os::unix::process::CommandExt;
            let hook = move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                // SAFETY: setrlimit and signal only change this (child) process's own settings;
                // both are async-signal-safe.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit);
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                }
                Ok(())
            };
            // SAFETY: the hook makes only async-signal-safe calls.
            unsafe { command.pre_exec(hook) };
        }
        self.child = Some(spawn(&mut command));
    }

    /// Kills the master and every process below it, and waits for the master.
    pub fn kill_all(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut tree = descendants(child.id());
        tree.push(child.id());
        for pid in tree {
            // SAFETY: kill(2) on processes this test started (the master and its descendants).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = child.wait();
    }

    /// Starts `hello` with a config and waits until it serves.
    pub fn serving(options: Options<'_>) -> Service {
        let service = Service::start(options);
        service.wait_serving();
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr(), path)
    }

    /// Waits for `GET /` to answer 200 and returns the body.
    pub fn wait_serving(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = self.get("/") {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "service never answered; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker PID that answers `GET /` now.
    pub fn worker_pid(&self) -> u32 {
        field(&self.wait_serving(), "pid").parse().unwrap()
    }

    /// Waits until a worker other than `old` answers; returns the new body.
    pub fn wait_new_worker(&self, old: u32) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = self.wait_serving();
            if field(&body, "pid").parse::<u32>().unwrap() != old {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no new worker replaced pid {old}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the master log contains `needle` (returns the log).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times the master log contains `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Sends SIGUSR2 and waits until a new worker serves; returns its PID.
    pub fn restart(&self) -> u32 {
        let old = self.worker_pid();
        self.signal(libc::SIGUSR2);
        field(&self.wait_new_worker(old), "pid").parse().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<bin>.next`, the path the file fetcher watches by default.
    pub fn next_path(&self) -> PathBuf {
        self.bin.with_file_name(format!(
            "{}.next",
            self.bin.file_name().unwrap().to_string_lossy()
        ))
    }

    /// The first 12 hex digits of the SHA-256 the serving worker reports.
    pub fn served_sha(&self) -> String {
        field(&self.wait_serving(), "sha256")
    }

    /// Waits until `GET /` reports `sha` (a full hex digest).
    pub fn wait_for_sha(&self, sha: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.served_sha() != sha[..12] {
            assert!(
                Instant::now() < deadline,
                "never served sha256 {}:\n{}",
                &sha[..12],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Drops `bytes` at `<bin>.next` and waits until the log has one more line with `expect`.
    pub fn offer(&self, bytes: &[u8], expect: &str) {
        let before = self.log_count(expect);
        drop_file(&self.next_path(), bytes);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_count(expect) == before {
            assert!(
                Instant::now() < deadline,
                "never logged {expect:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The live binary is `live`, `worker` still serves, and no temporary file is left once
    /// an attempt in flight (a sidecar that changed is looked at again) has ended.
    pub fn assert_untouched(&self, live: &[u8], worker: u32, what: &str) {
        assert_eq!(
            std::fs::read(&self.bin).unwrap(),
            live,
            "{what}: the live binary changed"
        );
        assert_eq!(
            self.worker_pid(),
            worker,
            "{what}: the running worker was disturbed"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tmp = self.temporary_files();
        while !tmp.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            tmp = self.temporary_files();
        }
        assert!(tmp.is_empty(), "{what}: temporary files left: {tmp:?}");
        assert_eq!(
            std::fs::read(&self.bin).unwrap(),
            live,
            "{what}: the live binary changed"
        );
    }

    /// Upgrade temporary files beside the live binary.
    pub fn temporary_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                // The serving generation's pin is no leftover: recoveries run it.
                name.contains(".handover-")
                    && !name.ends_with(".handover-state")
                    && !name.contains(".handover-gen-")
            })
            .map(|e| e.path())
            .collect()
    }

    /// Waits for the master to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "master did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Children of the master (its workers and sanity runs).
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("--- master log ---\n{}", self.log());
        }
    }
}

/// Spawns `command`, retrying while its binary is "busy": a binary this test process has just
/// copied can still be open for writing in a child that another test thread forked meanwhile.
pub fn spawn(command: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

/// Kills a process and everything below it when dropped.
pub struct ProcessTree(pub u32);

impl Drop for ProcessTree {
    fn drop(&mut self) {
        let mut tree = descendants(self.0);
        tree.push(self.0);
        for pid in tree {
            // SAFETY: kill(2) on processes this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if parent_of(child) == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in children_of(p) {
            all.push(c);
            frontier.push(c);
        }
    }
    all
}

/// The parent PID of `pid`, if it is alive (zombies count as gone).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

pub fn alive(pid: u32) -> bool {
    parent_of(pid).is_some()
}

/// The value of `name=` in a hello line.
pub fn field(body: &str, name: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {body:?}"))
        .to_string()
}

/// One request on a fresh connection (`Connection: close`).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Writes `bytes` to `path` via a temporary file and a rename, with mode 0755.
pub fn drop_file(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("incoming");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A copy of `bin` with a fault trailer (see examples/testbed.rs).
pub fn with_trailer(bin: &Path, trailer: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(bin).unwrap();
    bytes.extend_from_slice(format!("\nHANDOVER-FAULT:{trailer}\n").as_bytes());
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A minisign key pair without a password.
pub fn keypair() -> (minisign::PublicKey, minisign::SecretKey) {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    (pair.pk, pair.sk)
}

/// A detached minisign signature of `bytes` with handover's release metadata for the
/// `testbed` example: the version its fault trailer declares (`version:<semver>`), else the
/// package's.
pub fn sign(bytes: &[u8], public: &minisign::PublicKey, secret: &minisign::SecretKey) -> String {
    let version = declared_version(bytes).unwrap_or_else(|| env!("CARGO_PKG_VERSION").into());
    sign_with(
        bytes,
        &release_comment(bytes, &version, "testbed"),
        public,
        secret,
    )
}

/// The trusted comment `handover sign` writes for `bytes` (this machine's target, now).
pub fn release_comment(bytes: &[u8], version: &str, name: &str) -> String {
    format!(
        "handover version={version} target={} name={name} size={} sha256={} released={}",
        env!("HANDOVER_TARGET"),
        bytes.len(),
        sha256_hex(bytes),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

/// A detached minisign signature of `bytes` with `trusted_comment`, as `minisign -S -t` writes.
pub fn sign_with(
    bytes: &[u8],
    trusted_comment: &str,
    public: &minisign::PublicKey,
    secret: &minisign::SecretKey,
) -> String {
    minisign::sign(
        Some(public),
        secret,
        std::io::Cursor::new(bytes),
        Some(trusted_comment),
        None,
    )
    .unwrap()
    .into_string()
}

/// The `version:<semver>` of a testbed binary's fault trailer.
fn declared_version(bytes: &[u8]) -> Option<String> {
    let tail = &bytes[bytes.len().saturating_sub(512)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("HANDOVER-FAULT:version:"))
        .map(str::to_string)
        .next()
}

/// How many descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The resident memory of `pid`, in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// A key pair written by Debian's `minisign -G -W` (no password) into `dir`: the public and
/// secret key files.
pub fn minisign_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let (public, secret) = (dir.join("release.pub"), dir.join("release.key"));
    let out = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("Debian's minisign (apt install minisign; .ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (public, secret)
}
