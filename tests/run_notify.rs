//! `handover run`'s runtime directory and the workers' `NOTIFY_SOCKET`: the master never puts
//! its notify sockets in a directory someone else could have prepared, and only the worker's own
//! process tree can make the worker ready.

mod util;

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// A Python program that sends `READY=1` from its own process, once `go` exists (at once when
/// `go` is empty), and then sleeps.
fn python_notifier(go: &Path) -> String {
    format!(
        "#!/usr/bin/env python3\nimport os, socket, time\ngo = {go:?}\n\
         while go and not os.path.exists(go):\n    time.sleep(0.02)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"])\n\
         while True:\n    time.sleep(60)\n",
        go = go.to_str().unwrap()
    )
}

/// `handover run` of a script with `ready = "notify"`, killed with its children on drop.
struct Run {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Run {
    /// Writes `script` as the program and its config into a fresh directory and starts the
    /// master on them.
    fn start(script: &str, env: &[(&str, &OsString)]) -> Run {
        Self::start_via(script, env, |args| {
            let mut command = Command::new(HANDOVER);
            command.args(args);
            command
        })
    }

    /// Like `start`, through the command `launch` makes of the arguments of `handover`.
    fn start_via(
        script: &str,
        env: &[(&str, &OsString)],
        launch: impl FnOnce(&[OsString]) -> Command,
    ) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("program");
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("handover.toml");
        std::fs::write(
            &config,
            format!(
                "control_socket = \"{}\"\nready_timeout = \"60s\"\n[program]\nready = \"notify\"\n\
                 [[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{}\"\n",
                dir.path().join("control.sock").display(),
                util::free_port()
            ),
        )
        .unwrap();
        let args: Vec<OsString> = vec![
            "run".into(),
            "--config".into(),
            config.into(),
            "--".into(),
            program.into(),
        ];
        let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
        let mut command = launch(&args);
        command
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = util::spawn(&mut command);
        Run {
            child: Some(child),
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("master.log")).unwrap_or_default()
    }

    /// `handover status` once the control socket answers.
    fn status(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = Command::new(HANDOVER)
                .args(["status", "--socket"])
                .arg(self.path("control.sock"))
                .output()
                .unwrap();
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            assert!(Instant::now() < deadline, "no status:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn phase(&self) -> String {
        let status = self.status();
        status
            .lines()
            .find_map(|l| l.strip_prefix("phase: "))
            .unwrap_or_else(|| panic!("no phase in {status}"))
            .to_string()
    }

    fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.phase() != "serving" {
            assert!(Instant::now() < deadline, "never ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker (the master's child) and the `NOTIFY_SOCKET` it was given.
    fn worker(&self) -> (u32, PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for pid in util::children_of(self.pid()) {
                if let Some(socket) = notify_socket_of(pid) {
                    return (pid, socket);
                }
            }
            assert!(Instant::now() < deadline, "no worker:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the master to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "master did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on the master this test started.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        assert_eq!(self.wait_exit(), Some(0), "{}", self.log());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(util::ProcessTree(child.id()));
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("--- master log ---\n{}", self.log());
        }
    }
}

fn notify_socket_of(pid: u32) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| PathBuf::from(String::from_utf8(v.to_vec()).unwrap()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A private directory as the master must make it: 0700, ours, a random name in `base`.
fn assert_private(dir: &Path, base: &Path, master: u32) {
    assert_eq!(dir.parent(), Some(base), "{}", dir.display());
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("handover-"), "{name}");
    assert_ne!(name, format!("handover-{master}"), "a predictable name");
    assert!(
        name.len() >= "handover-".len() + 16,
        "too short to be random: {name}"
    );
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    // SAFETY: geteuid has no preconditions.
    assert_eq!(std::fs::metadata(dir).unwrap().uid(), unsafe {
        libc::geteuid()
    });
}

// regression: `handover run` used `$XDG_RUNTIME_DIR/handover-<pid>` even when someone else had
// created it first, and then owned the workers' notify sockets.
#[test]
fn the_master_never_uses_a_runtime_directory_that_already_exists() {
    let base = tempfile::tempdir().unwrap();
    let xdg = base.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let foreign_owner = if is_root() {
        "chown 65534:65534 \"$d\" && "
    } else {
        ""
    };
    // The shell makes the old predictable directory for its own PID, world-writable (and
    // another user's, as root), then execs the master with that PID.
    let prepare = format!(
        "d=\"$XDG_RUNTIME_DIR/handover-$$\" && mkdir -m 0777 \"$d\" && {foreign_owner}exec \"$0\" \"$@\""
    );
    let go = base.path().join("go");
    let run = Run::start_via(
        &python_notifier(&go),
        &[("XDG_RUNTIME_DIR", &xdg.clone().into_os_string())],
        |args| {
            let mut command = Command::new("sh");
            command.arg("-c").arg(prepare).arg(HANDOVER).args(args);
            command
        },
    );
    let prepared = xdg.join(format!("handover-{}", run.pid()));
    let (_, socket) = run.worker();
    assert!(
        prepared.is_dir(),
        "the shell did not prepare {}",
        prepared.display()
    );
    let used = socket.parent().unwrap();
    assert_ne!(
        used, prepared,
        "the master used the directory prepared for it"
    );
    assert_private(used, &xdg, run.pid());
    // The socket exists until the worker is ready.
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    std::fs::write(&go, b"").unwrap();
    run.wait_serving();
    assert_eq!(std::fs::read_dir(&prepared).unwrap().count(), 0);
    assert_eq!(
        mode(&prepared),
        0o777,
        "the master touched the prepared directory"
    );
}

#[test]
fn two_masters_get_different_private_directories_removed_on_exit() {
    let base = tempfile::tempdir().unwrap();
    let xdg = base.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let env = [("XDG_RUNTIME_DIR", &xdg.clone().into_os_string())];
    let mut first = Run::start(&python_notifier(Path::new("")), &env);
    let mut second = Run::start(&python_notifier(Path::new("")), &env);
    first.wait_serving();
    second.wait_serving();
    let dirs: Vec<PathBuf> = [&first, &second]
        .iter()
        .map(|run| {
            let dir = run.worker().1.parent().unwrap().to_path_buf();
            assert_private(&dir, &xdg, run.pid());
            dir
        })
        .collect();
    assert_ne!(dirs[0], dirs[1]);
    first.stop();
    assert!(
        !dirs[0].exists(),
        "{} outlived its master",
        dirs[0].display()
    );
    assert!(dirs[1].is_dir(), "the other master's directory went too");
    second.stop();
    assert_eq!(
        std::fs::read_dir(&xdg).unwrap().count(),
        0,
        "left behind in {}",
        xdg.display()
    );
}

#[test]
fn the_service_managers_runtime_directory_is_used_only_when_private() {
    let base = tempfile::tempdir().unwrap();
    let make = |name: &str, mode: u32| {
        let dir = base.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    };
    let good = make("good", 0o755);
    let other = make("other", 0o755);

    // Several `RuntimeDirectory=` entries: the first one is used, as it is, and kept at exit.
    let mut listed = OsString::from(&good);
    listed.push(":");
    listed.push(&other);
    let go = base.path().join("go");
    let mut run = Run::start(&python_notifier(&go), &[("RUNTIME_DIRECTORY", &listed)]);
    let (_, socket) = run.worker();
    assert_eq!(socket.parent(), Some(good.as_path()));
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    std::fs::write(&go, b"").unwrap();
    run.wait_serving();
    run.stop();
    assert!(good.is_dir(), "the service's runtime directory was removed");
    assert_eq!(mode(&good), 0o755);
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);

    let mut refused = vec![
        (
            make("everyone", 0o777),
            "mode 0777 lets everyone write into it".to_string(),
        ),
        (
            make("group", 0o775),
            "mode 0775 lets its group write into it".to_string(),
        ),
        (base.path().join("missing"), "No such file".to_string()),
    ];
    if is_root() {
        let foreign = make("foreign", 0o755);
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        refused.push((foreign, "owned by uid 65534, not by uid 0".to_string()));
    } else {
        eprintln!("not root: cannot make a directory of another user; checked modes only");
    }
    for (dir, why) in refused {
        let mut run = Run::start(
            &python_notifier(Path::new("")),
            &[("RUNTIME_DIRECTORY", &dir.clone().into_os_string())],
        );
        let code = run.wait_exit();
        let log = run.log();
        assert_ne!(code, Some(0), "{log}");
        let expected = format!("RUNTIME_DIRECTORY: refusing {}: {why}", dir.display());
        assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
        if dir.exists() {
            assert_eq!(
                std::fs::read_dir(&dir).unwrap().count(),
                0,
                "{}",
                dir.display()
            );
        }
    }
}

// regression: the worker's NOTIFY_SOCKET took `READY=1` from any process that could reach it.
#[test]
fn a_foreign_process_cannot_make_a_worker_ready() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let run = Run::start(&python_notifier(&go), &[]);
    let (worker, socket) = run.worker();
    assert_eq!(run.phase(), "starting");

    // This test process is not in the worker's process tree.
    let stranger = UnixDatagram::unbound().unwrap();
    stranger.send_to(b"READY=1\n", &socket).unwrap();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let warning = format!("sender_pid={} sender_uid={uid}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.log().contains(&warning) && run.phase() == "starting" {
        assert!(Instant::now() < deadline, "no verdict:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(run.phase(), "starting", "a stranger's READY=1 was taken");
    stranger.send_to(b"READY=1", &socket).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.phase(), "starting", "a stranger's READY=1 was taken");
    let warnings = run
        .log()
        .matches("outside the worker's process tree")
        .count();
    assert_eq!(warnings, 1, "once per sender:\n{}", run.log());
    assert!(
        run.log().contains(&format!("worker_pid={worker}")),
        "{}",
        run.log()
    );

    // The worker's own READY=1 still counts.
    std::fs::write(&go, b"").unwrap();
    run.wait_serving();
}

#[test]
fn a_child_of_the_worker_can_make_it_ready() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // Not exec'd: python runs as the shell's child. It stays a moment after sending, as a helper
    // must (see the docs of `handover run`): a sender that is gone cannot be placed in the tree.
    let script = format!(
        "#!/bin/sh\nwhile [ ! -e '{go}' ]; do sleep 0.02; done\n\
         python3 -c 'import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
         s.sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"]); time.sleep(2)'\nexec sleep 600\n",
        go = go.display()
    );
    let run = Run::start(&script, &[]);
    run.worker();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.phase(), "starting");
    std::fs::write(&go, b"").unwrap();
    run.wait_serving();
    assert!(
        !run.log().contains("outside the worker's process tree"),
        "{}",
        run.log()
    );
}

#[test]
fn systemd_notify_in_a_shell_script_makes_the_worker_ready() {
    if Command::new("systemd-notify")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-notify is not installed; skipped");
        return;
    }
    let run = Run::start("#!/bin/sh\nsystemd-notify --ready\nexec sleep 600\n", &[]);
    run.wait_serving();
    assert!(
        !run.log().contains("outside the worker's process tree"),
        "{}",
        run.log()
    );
}
