//! Debian's etcd 3.4 for the etcd fetcher's tests: one member on 127.0.0.1, in a private data
//! directory, SIGKILLed when the test ends; it can be killed and started again on the same
//! ports and data, as a cluster restart looks to its clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handover::etcd::{EtcdConfig, EtcdFetcher};
use handover::fetcher::Store;

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client: super::free_port(),
            peer: super::free_port(),
        };
        etcd.spawn();
        etcd
    }

    /// Starts the member (again), and waits until it answers `/health`.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.client),
            format!("http://127.0.0.1:{}", self.peer),
        );
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("Debian's etcd (apt install etcd-server; .ci/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = super::http_get(self.addr(), "/health") {
                if body.contains("true") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd never became healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crashed member.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// How many reads (`Range` calls) the member has served since it started.
    pub fn ranges(&self) -> u64 {
        let (status, metrics) = super::http_get(self.addr(), "/metrics").unwrap();
        assert_eq!(status, 200, "{metrics}");
        metrics
            .lines()
            .filter(|l| l.starts_with("grpc_server_started_total{"))
            .filter(|l| l.contains("grpc_method=\"Range\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// A fetcher's store for keys under `prefix` (`/handover/app/`), to write with.
    pub fn writer(&self, prefix: &str) -> EtcdFetcher {
        let mut config = EtcdConfig::new(vec![self.endpoint()], format!("{prefix}release"));
        config.poll_only = true;
        EtcdFetcher::new(config).unwrap()
    }

    /// Writes `value` at `<prefix><name>`.
    pub fn put(&self, prefix: &str, name: &str, value: &[u8]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut writer = self.writer(prefix);
        runtime.block_on(writer.put(name, value.to_vec())).unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
