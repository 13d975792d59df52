//! `handover rollout serve` for the rollout tests, and clients of the HTTP store it answers.

#![allow(unreachable_pub, dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The CLI under test.
const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// `handover rollout serve`, killed on drop.
pub struct Served {
    child: std::process::Child,
    pub base: String,
}

impl Served {
    /// Serves `dir`, with `extra` arguments (`--token-file F`).
    pub fn start(dir: &Path, extra: &[&std::ffi::OsStr]) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(HANDOVER)
            .args(["rollout", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stderr = child.stderr.take().unwrap();
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|url| url.starts_with("http://"))
            .unwrap_or_else(|| panic!("handover rollout serve said {line:?}"))
            .to_string();
        Served { child, base }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the HTTP store at `base`, sending `token`.
pub fn http_store(base: &str, token: Option<&str>) -> handover_fetcher_http::HttpStore {
    let mut options = handover_fetcher_http::net::ClientOptions::new(
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    options.allow_insecure_loopback = true;
    let client = handover_fetcher_http::net::client(&options).unwrap();
    handover_fetcher_http::HttpStore::new(client, base.parse().unwrap(), token.map(String::from))
}
