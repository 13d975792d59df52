//! Signed release metadata: what the publisher's signature says is checked against the bytes,
//! this machine, the program and the candidate's own answer; the signed version is the floor,
//! kept across a SIGKILL of the master, in library mode and under `handover run`; releases
//! signed too long ago are refused and reported; `handover sign` writes what Debian's
//! `minisign -V` verifies.

#[cfg(feature = "s3")]
#[path = "../fetchers/s3/tests/util/mod.rs"]
mod s3util;
mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use util::{Options, Service};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");
const WATCH: &str = "fetcher = \"file\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\ncheck_timeout = \"5s\"\n";

/// A key pair, the config that trusts it (with `extra` in `[upgrade]`), and the directory of
/// the control socket.
struct Keyed {
    keys: (minisign::PublicKey, minisign::SecretKey),
    config: String,
    control: tempfile::TempDir,
}

impl Keyed {
    fn new(extra: &str) -> Keyed {
        let (public, secret) = util::keypair();
        let control = tempfile::tempdir().unwrap();
        let config = format!(
            "control_socket = \"{}\"\n{WATCH}public_keys = [\"{}\"]\n{extra}",
            control.path().join("control.sock").display(),
            public.to_base64()
        );
        Keyed {
            keys: (public, secret),
            config,
            control,
        }
    }

    fn status(&self) -> String {
        status(&self.control.path().join("control.sock"))
    }
}

fn testbed(config: &str) -> Service {
    Service::serving(Options {
        example: "testbed",
        config,
        ..Default::default()
    })
}

fn signature_path(service: &Service) -> PathBuf {
    service.bin.with_file_name("testbed.next.minisig")
}

/// Publishes `bytes` with a signature over them whose trusted comment is `comment`, and waits
/// for the log line `expect`.
fn publish(
    service: &Service,
    bytes: &[u8],
    comment: &str,
    keys: &(minisign::PublicKey, minisign::SecretKey),
    expect: &str,
) {
    std::fs::write(
        signature_path(service),
        util::sign_with(bytes, comment, &keys.0, &keys.1),
    )
    .unwrap();
    service.offer(bytes, expect);
}

fn status(socket: &Path) -> String {
    let out = Command::new(HANDOVER)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_field_of_the_signed_metadata_is_checked_and_a_correct_release_is_installed() {
    let keyed = Keyed::new("");
    let keys = &keyed.keys;
    let service = testbed(&keyed.config);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let candidate = |label: &str| util::with_trailer(&service.bin, label);

    // Signed over the bytes, with minisign's default comment: no metadata.
    let bytes = candidate("no-metadata");
    publish(
        &service,
        &bytes,
        "timestamp:1764583200\tfile:testbed",
        keys,
        "carries no handover metadata",
    );
    service.assert_untouched(&live, worker, "no metadata");

    let bytes = candidate("malformed");
    let comment = util::release_comment(&bytes, "0.1.0", "testbed").replace("size=", "size=x");
    publish(
        &service,
        &bytes,
        &comment,
        keys,
        "signed metadata: size \"x",
    );
    service.assert_untouched(&live, worker, "malformed");

    // The comment of another release (another sha256 and size), signed over these bytes.
    let bytes = candidate("mix-and-match");
    let comment = util::release_comment(b"another release", "0.1.0", "testbed");
    publish(
        &service,
        &bytes,
        &comment,
        keys,
        "signed metadata says sha256=",
    );
    service.assert_untouched(&live, worker, "other bytes' metadata");

    let bytes = candidate("wrong-target");
    let comment = util::release_comment(&bytes, "0.1.0", "testbed")
        .replace(env!("HANDOVER_TARGET"), "riscv64gc-unknown-linux-gnu");
    publish(
        &service,
        &bytes,
        &comment,
        keys,
        "but this machine says target=",
    );
    service.assert_untouched(&live, worker, "another machine's release");

    let bytes = candidate("other-program");
    let comment = util::release_comment(&bytes, "0.1.0", "billing");
    publish(
        &service,
        &bytes,
        &comment,
        keys,
        "signed metadata says name=billing",
    );
    service.assert_untouched(&live, worker, "another program signed by the same key");

    // The binary answers 0.2.0 in its sanity run; the signature says 0.3.0.
    let bytes = candidate("version:0.2.0");
    let comment = util::release_comment(&bytes, "0.3.0", "testbed");
    publish(
        &service,
        &bytes,
        &comment,
        keys,
        "signed metadata says version=0.3.0 but the candidate's sanity run says version=0.2.0",
    );
    service.assert_untouched(&live, worker, "sanity answer differs");

    let good = candidate("version:0.4.0");
    publish(
        &service,
        &good,
        &util::release_comment(&good, "0.4.0", "testbed"),
        keys,
        "passed every check",
    );
    service.wait_for_sha(&util::sha256_hex(&good));
    let status = keyed.status();
    assert!(
        status.contains("newest signed release: 0.4.0, signed 20"),
        "{status}"
    );
}

#[test]
fn a_replayed_older_signed_release_is_refused_after_the_master_is_killed() {
    let keyed = Keyed::new("");
    let keys = &keyed.keys;
    let mut service = testbed(&keyed.config);
    let v3 = util::with_trailer(&service.bin, "version:0.3.0");
    let v2 = util::with_trailer(&service.bin, "version:0.2.0");
    publish(
        &service,
        &v3,
        &util::release_comment(&v3, "0.3.0", "testbed"),
        keys,
        "passed every check",
    );
    service.wait_for_sha(&util::sha256_hex(&v3));
    service.wait_log("upgrade passed probation", Duration::from_secs(20));

    // An attacker who kept the signed 0.2.0 release offers it again.
    let replay = util::sign(&v2, &keys.0, &keys.1);
    std::fs::write(signature_path(&service), &replay).unwrap();
    service.offer(&v2, "version 0.2.0 is older than 0.3.0");

    // SIGKILL the master and its worker; the new master starts from the live binary, and the
    // floor comes from the state file, whatever that binary declares.
    service.kill_all();
    // Replaced by a rename, as an operator would: the killed worker may still be exiting and
    // keep the old file mapped, and writing over a running binary fails with "Text file busy".
    util::drop_file(
        &service.bin,
        &std::fs::read(util::example("testbed")).unwrap(),
    );
    service.spawn_master();
    service.wait_serving();
    std::fs::write(signature_path(&service), &replay).unwrap();
    service.offer(&v2, "version 0.2.0 is older than 0.3.0");
    let status = keyed.status();
    assert!(status.contains("highest installed: 0.3.0"), "{status}");
}

#[test]
fn a_release_signed_too_long_ago_is_refused_and_a_stale_source_is_reported() {
    let keyed = Keyed::new("max_signature_age = \"30d\"\n");
    let keys = &keyed.keys;
    let service = testbed(&keyed.config);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let old = util::with_trailer(&service.bin, "version:0.5.0");
    let forty_days_ago = SystemTime::now() - Duration::from_secs(40 * 86_400);
    let comment = util::release_comment(&old, "0.5.0", "testbed");
    let now_text = comment.rsplit("released=").next().unwrap().to_string();
    let comment = comment.replace(
        &now_text,
        &humantime::format_rfc3339_seconds(forty_days_ago).to_string(),
    );
    publish(
        &service,
        &old,
        &comment,
        keys,
        "longer ago than upgrade.max_signature_age (30days)",
    );
    service.assert_untouched(&live, worker, "a stale release");
    let status = keyed.status();
    assert!(
        status.contains("warning: the newest release seen (0.5.0) was signed 40 days ago"),
        "{status}"
    );

    let fresh = util::with_trailer(&service.bin, "version:0.6.0");
    publish(
        &service,
        &fresh,
        &util::release_comment(&fresh, "0.6.0", "testbed"),
        keys,
        "passed every check",
    );
    service.wait_for_sha(&util::sha256_hex(&fresh));
    let status = keyed.status();
    assert!(!status.contains("warning:"), "{status}");
}

/// `handover run` of the Python test server, killed with its children on drop.
struct Run {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Run {
    fn start(config: &str) -> Run {
        Run::start_with(config, &[])
    }

    fn start_with(config: &str, env: &[(&str, &str)]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let port = util::free_port();
        let program = dir.path().join("pyserver");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/pyserver.py");
        std::fs::copy(source, &program).unwrap();
        let path = dir.path().join("handover.toml");
        std::fs::write(
            &path,
            format!(
                "control_socket = \"{}\"\nidle_grace = \"500ms\"\n{config}\n[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:{port}\"\n",
                dir.path().join("control.sock").display()
            ),
        )
        .unwrap();
        let mut run = Run {
            child: None,
            dir,
            port,
            config: path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        run.spawn();
        run
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("master.log"))
            .unwrap();
        let mut command = Command::new(HANDOVER);
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--")
            .arg(self.path("pyserver"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(util::spawn(&mut command));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("master.log")).unwrap_or_default()
    }

    fn body(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = util::http_get(([127, 0, 0, 1], self.port).into(), "/") {
                return body;
            }
            assert!(Instant::now() < deadline, "never answered:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?} {count} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in util::descendants(child.id()) {
                // SAFETY: kill(2) on the processes of the master this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- master log ---\n{}", self.log());
        }
    }
}

fn public_key_line(public: &Path) -> String {
    std::fs::read_to_string(public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

/// `handover sign` with `args`; returns stdout, or panics with stderr.
fn handover_sign(args: &[&str], file: &Path, env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new(HANDOVER)
        .arg("sign")
        .args(args)
        .arg(file)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8(out.stderr).unwrap())
    }
}

#[test]
fn handover_run_refuses_a_replayed_release_signed_with_handover_sign_across_a_master_kill() {
    let keys = tempfile::tempdir().unwrap();
    let (public, secret) = util::minisign_keypair(keys.path());
    let mut run = Run::start(&format!(
        "fetcher = \"file\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\npublic_keys = [\"{}\"]\nrelease_name = \"pyserver\"\n",
        public_key_line(&public)
    ));
    assert!(run.body().contains("python\n"));
    let original = std::fs::read_to_string(run.path("pyserver")).unwrap();
    let release = |label: &str, version: &str| {
        let file = keys.path().join(format!("pyserver-{version}"));
        std::fs::write(&file, original.replace("python\\n", &format!("{label}\\n"))).unwrap();
        let secret = secret.to_str().unwrap();
        let target = env!("HANDOVER_TARGET");
        handover_sign(
            &[
                "-s",
                secret,
                "--version",
                version,
                "--target",
                target,
                "--name",
                "pyserver",
            ],
            &file,
            &[],
        )
        .unwrap();
        (
            std::fs::read(&file).unwrap(),
            std::fs::read(format!("{}.minisig", file.display())).unwrap(),
        )
    };
    let publish = |run: &Run, (bytes, signature): &(Vec<u8>, Vec<u8>)| {
        std::fs::write(run.path("pyserver.next.minisig"), signature).unwrap();
        util::drop_file(&run.path("pyserver.next"), bytes);
    };
    let v1 = release("python-v1", "1.0.0");
    let v2 = release("python-v2", "2.0.0");
    let v3 = release("python-v3", "3.0.0");

    publish(&run, &v2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run.body().contains("python-v2") {
        assert!(
            Instant::now() < deadline,
            "2.0.0 never served:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.wait_log_count("upgrade passed probation", 1);

    // Replay of the validly signed 1.0.0.
    publish(&run, &v1);
    run.wait_log_count("version 1.0.0 is older than 2.0.0", 1);
    assert!(run.body().contains("python-v2"));

    run.kill();
    run.spawn();
    assert!(run.body().contains("python-v2"));
    let _ = std::fs::remove_file(run.path("pyserver.next"));
    publish(&run, &v1);
    run.wait_log_count("version 1.0.0 is older than 2.0.0", 2);
    assert!(
        run.body().contains("python-v2"),
        "the replay was not installed"
    );

    publish(&run, &v3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run.body().contains("python-v3") {
        assert!(
            Instant::now() < deadline,
            "3.0.0 never served:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn handover_sign_writes_what_debian_minisign_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (public, secret) = util::minisign_keypair(dir.path());
    let binary = dir.path().join("app");
    std::fs::copy(util::example("testbed"), &binary).unwrap();
    let bytes = std::fs::read(&binary).unwrap();

    // A binary built on handover is asked its version and target.
    let printed = handover_sign(&["-s", secret.to_str().unwrap()], &binary, &[]).unwrap();
    let verified = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(&public)
        .arg("-m")
        .arg(&binary)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let expected = format!(
        "Trusted comment: handover version={} target={} name=app size={} sha256={} released=",
        env!("CARGO_PKG_VERSION"),
        env!("HANDOVER_TARGET"),
        bytes.len(),
        util::sha256_hex(&bytes)
    );
    assert!(stdout.contains(&expected), "{stdout}\nwant {expected}");
    assert!(
        printed.contains("app.minisig: handover version="),
        "{printed}"
    );

    // A program that does not answer handover's check mode needs --version.
    let script = dir.path().join("server.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let err = handover_sign(&["-s", secret.to_str().unwrap()], &script, &[]).unwrap_err();
    assert!(err.contains("pass --version"), "{err}");

    // A password-protected key: the password from HANDOVER_SIGN_PASSWORD; a wrong one is named.
    let pair = minisign::KeyPair::generate_encrypted_keypair(Some("correct horse".into())).unwrap();
    let locked = dir.path().join("locked.key");
    std::fs::write(&locked, pair.sk.to_box(None).unwrap().into_string()).unwrap();
    let locked_pub = dir.path().join("locked.pub");
    std::fs::write(&locked_pub, pair.pk.to_box().unwrap().into_string()).unwrap();
    let sig = dir.path().join("app.locked.minisig");
    let args = ["-s", locked.to_str().unwrap(), "-x", sig.to_str().unwrap()];
    let err = handover_sign(&args, &binary, &[("HANDOVER_SIGN_PASSWORD", "wrong")]).unwrap_err();
    assert!(err.contains("Wrong password"), "{err}");
    let err = handover_sign(&args, &binary, &[]).unwrap_err();
    assert!(err.contains("set HANDOVER_SIGN_PASSWORD"), "{err}");
    handover_sign(
        &args,
        &binary,
        &[("HANDOVER_SIGN_PASSWORD", "correct horse")],
    )
    .unwrap();
    let verified = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(&locked_pub)
        .arg("-m")
        .arg(&binary)
        .arg("-x")
        .arg(&sig)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn signing_settings_are_validated_and_reported_by_handover_check() {
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = util::keypair();
    let key = public.to_base64();
    let check = |upgrade: &str| {
        let path = dir.path().join("h.toml");
        std::fs::write(
            &path,
            format!("fetcher = \"file\"\n[upgrade]\n{upgrade}\n[[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:8080\"\n"),
        )
        .unwrap();
        let out = Command::new(HANDOVER)
            .args(["check", "--config"])
            .arg(&path)
            .env("HANDOVER_BINARY", util::example("testbed"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for (upgrade, expected) in [
        (
            "require_signed_metadata = true",
            "h.toml:3: upgrade.require_signed_metadata needs upgrade.public_keys",
        ),
        (
            "max_signature_age = \"30d\"",
            "upgrade.max_signature_age needs upgrade.public_keys",
        ),
        (
            "public_keys = [\"RWQnotakey\"]",
            "is not a minisign public key",
        ),
        ("release_name = \"two words\"", "upgrade.release_name"),
    ] {
        let (ok, text) = check(upgrade);
        assert!(!ok && text.contains(expected), "{upgrade}: {text}");
    }
    let (ok, text) = check(&format!(
        "public_keys = [\"{key}\"]\nmax_signature_age = \"30d\""
    ));
    assert!(ok, "{text}");
    assert!(
        text.contains("signature required, with signed metadata, at most 30days old"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "public_keys = [\"{key}\"]\nrequire_signed_metadata = false"
    ));
    assert!(
        ok && text.contains("signature required, over the bytes"),
        "{text}"
    );
}

/// Runs Debian's `minisign -S` with its default trusted comment: a signature over the bytes only.
#[cfg(feature = "s3")]
fn minisign_bytes_only(secret: &Path, file: &Path) -> Vec<u8> {
    let out = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(secret)
        .arg("-m")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(format!("{}.minisig", file.display())).unwrap()
}

// regression: under `handover run` (no version answered), an unsigned `x-amz-meta-version`
// became the floor, so someone able to write the bucket but not sign locked out every fix.
#[cfg(feature = "s3")]
#[test]
fn an_unsigned_version_in_s3_metadata_neither_lifts_the_floor_nor_passes_for_the_signed_one() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = s3util::Server::start();
    let bucket = rt.block_on(server.bucket("floor"));
    let keys = tempfile::tempdir().unwrap();
    let (public, secret) = util::minisign_keypair(keys.path());
    let config = {
        format!(
            "fetcher = \"s3\"\n[upgrade]\ninterval = \"300ms\"\nprobation = \"1s\"\npublic_keys = [\"{}\"]\nrequire_signed_metadata = false\n\
             [s3]\nbucket = \"{}\"\nkey = \"releases/pyserver\"\nendpoint_url = \"{}\"\nallow_insecure_loopback = true\nregion = \"us-east-1\"\noperation_timeout = \"5s\"\n",
            public_key_line(&public),
            bucket.name,
            server.endpoint
        )
    };
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut run = Run::start_with(&config, &env);
    let original = std::fs::read_to_string(run.path("pyserver")).unwrap();
    let build = |label: &str| {
        let file = keys.path().join(label);
        std::fs::write(&file, original.replace("python\\n", &format!("{label}\\n"))).unwrap();
        file
    };
    let serving = |run: &Run, label: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.body().contains(label) {
            assert!(
                Instant::now() < deadline,
                "{label} never served:\n{}",
                run.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let put = |file: &Path, signature: &[u8], claimed: &str| {
        rt.block_on(bucket.put("releases/pyserver.minisig", signature, false, None));
        rt.block_on(bucket.put(
            "releases/pyserver",
            &std::fs::read(file).unwrap(),
            true,
            Some(claimed),
        ));
    };

    // Signatures over the bytes only (require_signed_metadata = false): the bucket's unsigned
    // claim of 99.0.0 is not what the floor becomes.
    let v2 = build("python-v2");
    put(&v2, &minisign_bytes_only(&secret, &v2), "99.0.0");
    serving(&run, "python-v2");
    run.wait_log_count("upgrade passed probation", 1);
    let v3 = build("python-v3");
    put(&v3, &minisign_bytes_only(&secret, &v3), "1.0.1");
    serving(&run, "python-v3");

    // With signed metadata (the default): a claim that disagrees with the signed version is
    // refused, naming both; the same release with an honest claim is installed.
    run.kill();
    let text = std::fs::read_to_string(&run.config).unwrap();
    std::fs::write(
        &run.config,
        text.replace(
            "require_signed_metadata = false",
            "require_signed_metadata = true",
        ),
    )
    .unwrap();
    run.spawn();
    serving(&run, "python-v3");
    let v4 = build("python-v4");
    let sign = |file: &Path| {
        let secret = secret.to_str().unwrap();
        let target = env!("HANDOVER_TARGET");
        handover_sign(
            &[
                "-s",
                secret,
                "--version",
                "2.0.0",
                "--target",
                target,
                "--name",
                "pyserver",
            ],
            file,
            &[],
        )
        .unwrap();
        std::fs::read(format!("{}.minisig", file.display())).unwrap()
    };
    let signature = sign(&v4);
    put(&v4, &signature, "99.0.0");
    run.wait_log_count("signed metadata says version=2.0.0 but the fetcher (an unsigned tag or object metadata) says version=99.0.0", 1);
    assert!(run.body().contains("python-v3"));
    // The same bytes again with an honest claim: the ETag stays, Last-Modified (whole seconds)
    // moves on.
    std::thread::sleep(Duration::from_millis(1100));
    put(&v4, &signature, "2.0.0");
    serving(&run, "python-v4");
}
