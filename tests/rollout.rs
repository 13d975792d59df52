//! Staged rollouts through a release directory shared by a fleet: 5 real masters and 45
//! in-process simulated hosts read the same signed manifest (written by `handover rollout`)
//! and write reports beside it. A good release reaches 100 % step by step; a bad one (it
//! crashes after ready) halts itself after its first cohort, and the hosts outside that cohort
//! never take it.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use handover::fetcher::Store;
use handover::rollout::{self, Outcome, Report, Tally, Verdict};
use handover_fetcher_file::DirStore;
use util::{Options, Service};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// The release directory, its keys and the publisher's config.
struct Fleet {
    dir: tempfile::TempDir,
    secret: PathBuf,
    public: String,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = util::minisign_keypair(dir.path());
        let public = std::fs::read_to_string(&public)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        let fleet = Fleet {
            dir,
            secret,
            public,
        };
        std::fs::write(
            fleet.path("publisher.toml"),
            format!(
                "fetcher = \"file\"\n[file]\npath = \"{}\"\n[upgrade]\npublic_keys = [\"{}\"]\n",
                fleet.release().display(),
                fleet.public
            ),
        )
        .unwrap();
        fleet
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where the release is published.
    fn release(&self) -> PathBuf {
        self.path("testbed.next")
    }

    /// A real master watching the release directory as `host`.
    fn master(&self, host: &str) -> (Service, PathBuf) {
        let socket = self.path(&format!("{host}.sock"));
        let config = format!(
            "control_socket = \"{}\"\nfetcher = \"file\"\n[file]\npath = \"{}\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"2s\"\ncheck_timeout = \"5s\"\nhost_id = \"{host}\"\nrequire_signed_metadata = false\npublic_keys = [\"{}\"]\n",
            socket.display(),
            self.release().display(),
            self.public
        );
        let service = Service::serving(Options {
            example: "testbed",
            config: &config,
            ..Default::default()
        });
        (service, socket)
    }

    /// Starts a rollout of `bytes` in `steps` (`handover rollout start`), then publishes them
    /// with their signature (Debian's `minisign`): the manifest first, so that no host takes
    /// the release unstaged.
    fn publish_and_start(&self, bytes: &[u8], steps: &str, halt_hosts: u32) {
        let file = self.stage(bytes);
        let halt = halt_hosts.to_string();
        let args = [
            "start",
            "--steps",
            steps,
            "--halt-hosts",
            &halt,
            "--halt-percent",
            "0",
        ];
        let out = self.cli(&args, Some(&file));
        assert!(out.contains("started (serial 1)"), "{out}");
        std::fs::rename(
            file.with_extension("minisig"),
            self.path("testbed.next.minisig"),
        )
        .unwrap();
        util::drop_file(&self.release(), bytes);
    }

    /// Writes `bytes` to a staging directory and signs them there (Debian's `minisign`).
    fn stage(&self, bytes: &[u8]) -> PathBuf {
        let staging = self.path("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let file = staging.join("testbed");
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new("minisign")
            .args(["-S", "-s"])
            .arg(&self.secret)
            .arg("-m")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        file
    }

    fn cli(&self, args: &[&str], file: Option<&Path>) -> String {
        let mut command = Command::new(HANDOVER);
        command
            .arg("rollout")
            .args(&args[..1])
            .arg("--config")
            .arg(self.path("publisher.toml"));
        if args[0] != "status" {
            command.arg("--secret-key").arg(&self.secret);
        }
        command.args(&args[1..]);
        if let Some(file) = file {
            command.arg(file);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "handover rollout {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["status", "--json"], None)).unwrap()
    }
}

/// A host simulated in this process: the same manifest, bucket, halt rule and reports as a
/// real master, with the download and install reduced to reading the bytes and checking them.
struct Simulated {
    host: String,
    book: rollout::Book,
    /// When it took the release, and the step in force then.
    took: Option<(Instant, usize)>,
}

impl Simulated {
    /// `size` is the published release's size: its SHA-256 was checked once by the test, so
    /// that 45 hosts need not hash a 300 MB debug build each.
    async fn poll(&mut self, store: &mut DirStore, keys: &[String], release: &Path, size: u64) {
        if self.took.is_some() {
            return;
        }
        let Some(manifest) = rollout::read(store, keys).await.unwrap() else {
            return;
        };
        let sha = manifest.release.sha256.clone();
        let reports = self.book.reports(store, &sha).await.unwrap();
        let bucket = rollout::bucket(&self.host, &sha);
        let verdict = rollout::decide(
            &manifest,
            bucket,
            &Tally::of(&manifest, &reports),
            SystemTime::now(),
        );
        if let Verdict::Install { step } = verdict {
            let published = std::fs::metadata(release).map(|m| m.len()).unwrap_or(0);
            if published != size {
                return; // not published yet
            }
            let report = Report::new(&self.host, &sha, Outcome::Ready, None);
            store
                .put(&rollout::report_name(&sha, &self.host), report.to_json())
                .await
                .unwrap();
            self.took = Some((Instant::now(), step));
        }
    }
}

/// Host ids whose buckets for `sha` satisfy `keep`, `count` of them.
fn hosts(prefix: &str, sha: &str, count: usize, keep: impl Fn(u32) -> bool) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|h| keep(rollout::bucket(h, sha)))
        .take(count)
        .collect()
}

/// Whether `table` has a line that reads `words` (whatever the spacing).
fn has_line(table: &str, words: &[&str]) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().eq(words.iter().copied()))
}

fn control_status(socket: &Path) -> String {
    let out = Command::new(HANDOVER)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_good_release_reaches_every_host_step_by_step() {
    let fleet = Fleet::new();
    let base = std::fs::read(util::example("testbed")).unwrap();
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let sha = util::sha256_hex(&good);
    // Five real masters: two in the first step (10 %), two in the second (50 %), one last.
    let mut real = hosts("real", &sha, 2, |b| b < 1_000);
    real.extend(hosts("real", &sha, 2, |b| (1_000..5_000).contains(&b)));
    real.extend(hosts("real", &sha, 1, |b| b >= 5_000));
    let masters: Vec<_> = real.iter().map(|h| fleet.master(h)).collect();
    let mut simulated: Vec<Simulated> = (0..45)
        .map(|i| Simulated {
            host: format!("sim-{i}"),
            book: rollout::Book::new(),
            took: None,
        })
        .collect();

    // Steps far longer than the test: `handover rollout promote` moves them on.
    fleet.publish_and_start(&good, "10%:1h,50%:1h,100%", 3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut store = DirStore::new(fleet.dir.path());
    let keys = vec![fleet.public.clone()];
    let size = good.len() as u64;
    let turn_of = |host: &str| {
        [10.0, 50.0, 100.0]
            .iter()
            .position(|p| rollout::covers(*p, rollout::bucket(host, &sha)))
            .unwrap()
    };
    let real_turns = [0, 0, 1, 1, 2];
    for step in 0..3 {
        let in_step = simulated
            .iter()
            .filter(|s| turn_of(&s.host) <= step)
            .count()
            + real_turns.iter().filter(|t| **t <= step).count();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for sim in &mut simulated {
                runtime.block_on(sim.poll(&mut store, &keys, &fleet.release(), size));
            }
            let status = fleet.status_json();
            if status["ready"] == in_step || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Everyone whose step it is took the release; nobody else did.
        let status = fleet.status_json();
        assert_eq!(status["ready"], in_step, "step {}: {status:#}", step + 1);
        assert_eq!(status["step"], step + 1);
        for sim in &simulated {
            assert_eq!(
                sim.took.is_some(),
                turn_of(&sim.host) <= step,
                "{} at step {}",
                sim.host,
                step + 1
            );
        }
        for (i, (service, _)) in masters.iter().enumerate() {
            let runs_it = service.served_sha() == sha[..12];
            assert_eq!(
                runs_it,
                real_turns[i] <= step,
                "{} at step {}",
                real[i],
                step + 1
            );
        }
        if step < 2 {
            assert!(fleet.cli(&["promote"], None).contains("promoted"));
        }
    }
    let status = fleet.status_json();
    assert_eq!(
        status["ready"], 50,
        "every host serves the release: {status:#}"
    );
    assert_eq!(status["rolled_back"], 0);
    assert_eq!(status["halted"], serde_json::Value::Null);
    assert_ne!(util::sha256_hex(&base), sha);
    let table = fleet.cli(&["status"], None);
    assert!(has_line(&table, &["ready", "50"]), "{table}");
    assert!(table.contains("3 of 3 (100 % of hosts"), "{table}");
}

#[test]
fn a_bad_release_halts_itself_after_the_first_cohort() {
    let fleet = Fleet::new();
    let bad = util::with_trailer(&util::example("testbed"), "crash-after-ready:300");
    let sha = util::sha256_hex(&bad);
    // Three real masters in the first step (10 %), two outside the second one (50 %).
    let mut real = hosts("real", &sha, 3, |b| b < 1_000);
    real.extend(hosts("real", &sha, 2, |b| b >= 5_000));
    let masters: Vec<_> = real.iter().map(|h| fleet.master(h)).collect();
    let old_sha = masters[3].0.served_sha();
    // Simulated hosts outside the first cohort.
    let mut simulated: Vec<Simulated> = hosts("sim", &sha, 45, |b| b >= 1_000)
        .into_iter()
        .map(|host| Simulated {
            host,
            book: rollout::Book::new(),
            took: None,
        })
        .collect();

    // The halt rule halts at 3 hosts. Once halted, the publisher promotes the rollout to
    // 100 %: it stays halted, and no host outside the first cohort takes the release.
    fleet.publish_and_start(&bad, "10%:1h,50%:1h,100%", 3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut store = DirStore::new(fleet.dir.path());
    let keys = vec![fleet.public.clone()];
    let size = bad.len() as u64;
    let poll_all = |simulated: &mut Vec<Simulated>, store: &mut DirStore| {
        for sim in simulated.iter_mut() {
            runtime.block_on(sim.poll(store, &keys, &fleet.release(), size));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.status_json()["halted"].is_null() && Instant::now() < deadline {
        poll_all(&mut simulated, &mut store);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fleet
        .cli(&["promote"], None)
        .contains("promoted (serial 2)"));
    assert!(fleet
        .cli(&["promote"], None)
        .contains("promoted (serial 3)"));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        poll_all(&mut simulated, &mut store);
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = fleet.status_json();
    assert_eq!(status["rolled_back"], 3, "{status:#}");
    assert_eq!(status["ready"], 0, "{status:#}");
    assert!(
        status["halted"].as_str().unwrap_or("").contains("3 hosts"),
        "{status:#}"
    );
    assert_eq!(status["step"], 3, "the halt holds at 100 %: {status:#}");
    for sim in &simulated {
        assert!(sim.took.is_none(), "{} took the bad release", sim.host);
    }
    for (service, socket) in &masters[3..] {
        assert_eq!(
            service.served_sha(),
            old_sha,
            "a host outside the first cohort kept its binary"
        );
        assert!(
            service.log_count("downloaded candidate") == 0,
            "and never downloaded it"
        );
        let shown = control_status(socket);
        assert!(
            shown.contains("rollout: release") && shown.contains("HALTED"),
            "{shown}"
        );
    }
    for (service, socket) in &masters[..3] {
        assert_eq!(service.served_sha(), old_sha, "the cohort rolled back");
        let shown = control_status(socket);
        assert!(
            shown.contains("rolled release") && shown.contains("back"),
            "{shown}"
        );
    }
    // The publisher sees why, resumes (earlier failures stop counting), and halts by hand.
    let table = fleet.cli(&["status"], None);
    assert!(
        table.contains("HALTED") && has_line(&table, &["rolled-back", "3"]),
        "{table}"
    );
    assert!(fleet
        .cli(&["halt", "--reason", "bad build"], None)
        .contains("halted (serial 4)"));
    assert_eq!(
        fleet.status_json()["halted"],
        "halted by the publisher: bad build"
    );
    assert!(fleet.cli(&["resume"], None).contains("resumed (serial 5)"));
    assert_eq!(fleet.status_json()["halted"], serde_json::Value::Null);
}

/// Waits until `handover status` on `socket` contains `needle`.
fn wait_status(socket: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = control_status(socket);
        if shown.contains(needle) || Instant::now() > deadline {
            let check = Command::new(HANDOVER)
                .args(["upgrade", "--socket"])
                .arg(socket)
                .output()
                .unwrap();
            let check = String::from_utf8_lossy(&check.stdout).into_owned()
                + &String::from_utf8_lossy(&check.stderr);
            assert!(
                shown.contains(needle),
                "no {needle:?} in:\n{shown}\n(handover upgrade: {check})"
            );
            return shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_unsigned_or_replayed_manifest_stops_upgrades_with_the_reason_and_a_valid_one_installs() {
    let fleet = Fleet::new();
    let (mut service, socket) = fleet.master("solo");
    let old_sha = service.served_sha();
    let good = util::with_trailer(&util::example("testbed"), "version:0.2.0");
    let sha = util::sha256_hex(&good);

    // An unsigned manifest, with the release published and signed: nothing is installed, and
    // status says why.
    let start = SystemTime::now();
    let unsigned = rollout::Manifest::new(
        rollout::Release::new(None, sha.clone()),
        start,
        vec![rollout::Step::new(100.0, None)],
        start + Duration::from_secs(3600),
    );
    std::fs::write(fleet.path(rollout::MANIFEST), unsigned.to_json()).unwrap();
    let file = fleet.stage(&good);
    std::fs::rename(
        file.with_extension("minisig"),
        fleet.path("testbed.next.minisig"),
    )
    .unwrap();
    util::drop_file(&fleet.release(), &good);
    wait_status(
        &socket,
        "rollout.json.minisig is missing, and upgrade.public_keys is set",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(service.served_sha(), old_sha);
    assert_eq!(
        service.log_count("downloaded candidate"),
        0,
        "nothing was even downloaded"
    );

    // The publisher signs it: the release is installed.
    let out = fleet.cli(&["start", "--steps", "100%"], Some(&file));
    assert!(out.contains("started (serial 1)"), "{out}");
    service.wait_for_sha(&sha);
    wait_status(&socket, "runs here");

    // The serial-1 manifest is kept, the publisher halts (serial 2), and the old one is
    // replayed: refused, also after a SIGKILL of the master.
    let kept = (
        std::fs::read(fleet.path(rollout::MANIFEST)).unwrap(),
        std::fs::read(fleet.path(rollout::SIGNATURE)).unwrap(),
    );
    assert!(fleet
        .cli(&["halt", "--reason", "hold"], None)
        .contains("serial 2"));
    wait_status(&socket, "halted by the publisher: hold");
    std::fs::write(fleet.path(rollout::SIGNATURE), &kept.1).unwrap();
    std::fs::write(fleet.path(rollout::MANIFEST), &kept.0).unwrap();
    let replayed = "serial 1 is older than serial 2 seen before";
    wait_status(&socket, replayed);
    service.kill_all();
    service.spawn_master();
    service.wait_serving();
    wait_status(&socket, replayed);
    assert_eq!(service.served_sha(), sha[..12]);
}
