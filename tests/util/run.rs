//! `handover run` of a program from a private directory (config, control socket, log), killed
//! with everything below it and reaped when dropped, even by a failed assertion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `handover` command cargo built for the tests.
pub const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

pub struct Supervised {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Supervised {
    /// `handover run` of `program args` with `extra` prepended to the generated config (one
    /// `http` listener and a control socket), `env` added.
    pub fn start(program: &Path, args: &[&str], env: &[(&str, &str)], extra: &str) -> Supervised {
        let dir = tempfile::tempdir().unwrap();
        Supervised::start_in(dir, Path::new(HANDOVER), program, args, env, extra)
    }

    /// The same, in `dir`, with a `handover` executable of the test's choosing.
    pub fn start_in(
        dir: tempfile::TempDir,
        handover: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        extra: &str,
    ) -> Supervised {
        let port = super::free_port();
        std::fs::write(
            dir.path().join("handover.toml"),
            format!(
                "control_socket = \"{}\"\n{extra}\n[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{port}\"\n",
                dir.path().join("control.sock").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
        let mut command = Command::new(handover);
        command
            .args(["run", "--config"])
            .arg(dir.path().join("handover.toml"))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        Supervised {
            child: super::spawn(&mut command),
            dir,
            port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    /// Waits until the log has said `needle` `count` times.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?} {count} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid that answers a fresh connection, if one does.
    pub fn answering(&self) -> Option<u32> {
        let (status, body) = super::http_get(([127, 0, 0, 1], self.port).into(), "/").ok()?;
        (status == 200).then(|| super::field(&body, "pid").parse().ok())?
    }

    /// Waits for an answer; returns the pid that gave it.
    pub fn wait_answering(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = self.answering() {
                return pid;
            }
            assert!(Instant::now() < deadline, "never answered:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `handover COMMAND --socket …`.
    pub fn control(&self, command: &str) -> Output {
        Command::new(HANDOVER)
            .arg(command)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child this test started.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        drop(super::ProcessTree(self.child.id()));
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- master log ---\n{}", self.log());
        }
    }
}
