//! A fleet on the etcd fetcher, in one process, against a real etcd member (Debian's
//! `etcd-server`, started here on 127.0.0.1): how long until every host has read a release
//! pointer once it is written, and what polling costs the cluster with the watch and without it
//! (`poll_only`, the baseline, measured in the same run).
//!
//! Each host is an `EtcdFetcher` of its own (its own connections and watch) polled by a task
//! every `interval` with ±10 % jitter, and woken by the fetcher's notifier as the master is. The
//! pointer names the digest the hosts run, so a host that read it has nothing to download: the
//! figures are the cluster's and the fetcher's, not a download's.
//!
//! ```sh
//! cargo run --release --features etcd --example etcd_fanout            # 500 hosts, 1 s polls
//! cargo run --release --features etcd --example etcd_fanout -- 2000 5  # 2,000 hosts, 5 s polls
//! ```

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handover::etcd::{EtcdConfig, EtcdFetcher};
use handover::fetcher::{Fetcher, Running, Store};
use tokio::sync::watch;

/// How long each phase measures the reads of idle polls.
const IDLE: Duration = Duration::from_secs(10);

/// An etcd member in a temporary directory, SIGKILLed on drop.
struct Member {
    child: Child,
    client: u16,
    _dir: tempfile::TempDir,
}

impl Member {
    fn start() -> Member {
        let dir = tempfile::tempdir().unwrap();
        let port = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (port(), port());
        let (c, p) = (
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        );
        let child = Command::new("etcd")
            .arg("--name=fanout")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .args([
                format!("--listen-client-urls={c}"),
                format!("--advertise-client-urls={c}"),
                format!("--listen-peer-urls={p}"),
                format!("--initial-advertise-peer-urls={p}"),
                format!("--initial-cluster=fanout={p}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian: apt install etcd-server)");
        let member = Member {
            child,
            client,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !member.get("/health").is_some_and(|b| b.contains("true")) {
            assert!(Instant::now() < deadline, "etcd never became healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        member
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// One plain HTTP GET of etcd's own endpoints (`/health`, `/metrics`).
    fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client));
        let mut stream =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response.split_once("\r\n\r\n")?.1.to_string())
    }

    /// The reads (`Range` calls) served so far.
    fn ranges(&self) -> u64 {
        self.get("/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("grpc_server_started_total{"))
            .filter(|l| l.contains("grpc_method=\"Range\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one phase measured.
struct Phase {
    idle_reads: u64,
    learned: Vec<Duration>,
}

/// `hosts` hosts polling every `interval`; the pointer is written once every host has settled
/// into its idle polls.
async fn phase(member: &Member, hosts: usize, interval: Duration, poll_only: bool) -> Phase {
    // A key of its own per phase: the other phase's pointer is not there.
    let key = format!("/handover/fanout-{}/release", u8::from(poll_only));
    let running = Running::new([7; 32], None);
    let (written_tx, written) = watch::channel(None::<Instant>);
    let (learned_tx, mut learned_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for host in 0..hosts {
        let mut config = EtcdConfig::new(vec![member.endpoint()], key.clone());
        config.poll_only = poll_only;
        let mut fetcher = EtcdFetcher::new(config).unwrap();
        let (running, written, learned) = (running.clone(), written.clone(), learned_tx.clone());
        tasks.push(tokio::spawn(async move {
            let wake = fetcher.wake().unwrap();
            // Spread the first polls over one interval, as a fleet's are.
            let offset = interval.mul_f64((host as f64 * 0.618_034) % 1.0);
            tokio::time::sleep(offset).await;
            loop {
                let _ = fetcher.fetch(&running).await;
                if fetcher.memory().is_some() {
                    // It read the pointer (and has nothing to download: it runs that digest).
                    if let Some(at) = *written.borrow() {
                        let _ = learned.send(at.elapsed());
                    }
                    return;
                }
                let jitter = 0.9 + 0.2 * ((host as f64 * 0.754_877) % 1.0);
                tokio::select! {
                    _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
                    _ = wake.notified() => {}
                }
            }
        }));
    }
    drop(learned_tx);
    // Every host has polled (and, with the watch, dialled it) before the idle window.
    tokio::time::sleep(interval * 2 + Duration::from_secs(2)).await;
    let before = member.ranges();
    tokio::time::sleep(IDLE).await;
    let idle_reads = member.ranges() - before;

    let mut writer = {
        let mut config = EtcdConfig::new(vec![member.endpoint()], key.clone());
        config.poll_only = true;
        EtcdFetcher::new(config).unwrap()
    };
    let pointer = serde_json::json!({
        "url": "https://downloads.example.com/app",
        "sha256": hex::encode(running.sha256),
        "version": "1.0.0",
    });
    written_tx.send_replace(Some(Instant::now()));
    writer
        .put("release", pointer.to_string().into_bytes())
        .await
        .unwrap();
    let mut learned = Vec::with_capacity(hosts);
    while let Some(took) = learned_rx.recv().await {
        learned.push(took);
    }
    for task in tasks {
        let _ = task.await;
    }
    learned.sort();
    Phase {
        idle_reads,
        learned,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().map_or(500, |a| a.parse().expect("hosts"));
    let interval = Duration::from_secs(args.next().map_or(1, |a| a.parse().expect("seconds")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let member = Member::start();
    println!(
        "etcd fan-out: {hosts} hosts, one process, polls every {interval:?} ± 10 %, idle window {IDLE:?}"
    );
    for (name, poll_only) in [("watch", false), ("poll_only (baseline)", true)] {
        let result = runtime.block_on(phase(&member, hosts, interval, poll_only));
        let per_hour = result.idle_reads as f64 * 3600.0 / IDLE.as_secs_f64();
        println!(
            "{name:>21}: idle reads {:>6} in {IDLE:?} ({per_hour:>10.0}/h for the fleet); \
             all {} hosts read the release in {:?} (p50 {:?}, p99 {:?})",
            result.idle_reads,
            result.learned.len(),
            result.learned.last().copied().unwrap_or_default(),
            percentile(&result.learned, 0.5),
            percentile(&result.learned, 0.99),
        );
    }
}
