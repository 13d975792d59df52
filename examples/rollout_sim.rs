//! A staged rollout across a simulated fleet, on a simulated clock: every host runs the real
//! polling policy ([`rollout::Follower`]: manifest, bucket, halt rule, reports) against an
//! in-memory store that counts requests the way S3 bills them and GitHub limits them.
//!
//! Two releases go out on 10,000 hosts polling every 30 s (with jitter), in steps of
//! 1 % for 10 min, 10 % for 30 min, 50 % for 30 min, then 100 %: a good one, and a bad one that
//! crashes in probation. The baseline, measured in the same run on 1,000 hosts (it keeps every
//! report in every host, which 10,000 hosts in one process cannot afford), is the first
//! version's policy: manifest, signature and every report on every poll.
//!
//! ```sh
//! cargo run --release --example rollout_sim            # 10,000 hosts
//! cargo run --release --example rollout_sim -- 2000    # another fleet size
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use handover::fetcher::{async_trait, FetchError, Listed, Store};
use handover::rollout::{
    self, Book, Follower, Manifest, Outcome, Release, Report, Step, Tally, Verdict,
};

const INTERVAL: u64 = 30_000;
/// Download, swap and first ready, then probation.
const INSTALL_MS: u64 = 10_000;
const PROBATION_MS: u64 = 60_000;
/// A bad release crashes this long into probation.
const CRASH_MS: u64 = 5_000;
/// Simulated time at most.
const HORIZON_MS: u64 = 4 * 3_600_000;
/// S3 Standard list prices (us-east-1), dollars per 1,000 requests.
const S3_GET: f64 = 0.0004;
const S3_PUT_LIST: f64 = 0.005;

/// The objects, and what every request cost.
#[derive(Default)]
struct Shared {
    objects: HashMap<String, (u64, Vec<u8>)>,
    next_tag: u64,
    count: Counts,
    /// Requests per simulated second.
    per_second: Vec<u32>,
    now_ms: u64,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    /// GETs and HEADs answered with a body (or a 404).
    gets: u64,
    /// Conditional GETs answered `304`.
    not_modified: u64,
    /// LIST pages (1,000 keys each).
    lists: u64,
    puts: u64,
    /// Requests that count against GitHub's limit: everything but 304s.
    downloads: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.gets + self.not_modified + self.lists + self.puts
    }
    fn dollars(&self) -> f64 {
        (self.gets + self.not_modified) as f64 / 1000.0 * S3_GET
            + (self.lists + self.puts) as f64 / 1000.0 * S3_PUT_LIST
    }
}

impl Shared {
    fn tick(&mut self, n: u32) {
        let second = (self.now_ms / 1000) as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += n;
    }
}

/// One host's client: S3's `If-None-Match` for top-level documents, as `S3Store` sends it.
struct Client {
    shared: Arc<Mutex<Shared>>,
    held: HashMap<String, u64>,
    /// Whether conditional reads are sent (the baseline sends none).
    conditional: bool,
}

#[async_trait]
impl Store for Client {
    fn locate(&self, name: &str) -> String {
        format!("mem://{name}")
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let mut shared = self.shared.lock().unwrap();
        shared.tick(1);
        let found = shared.objects.get(name).cloned();
        let top = self.conditional && !name.contains('/');
        match found {
            Some((tag, bytes)) => {
                if top && self.held.get(name) == Some(&tag) {
                    shared.count.not_modified += 1;
                } else {
                    shared.count.gets += 1;
                    if top {
                        self.held.insert(name.to_string(), tag);
                    }
                }
                Ok(Some(bytes))
            }
            None => {
                shared.count.gets += 1;
                Ok(None)
            }
        }
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        let mut shared = self.shared.lock().unwrap();
        shared.tick(1);
        shared.count.puts += 1;
        shared.next_tag += 1;
        let tag = shared.next_tag;
        shared.objects.insert(name.to_string(), (tag, bytes));
        Ok(())
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        let mut shared = self.shared.lock().unwrap();
        let listed: Vec<Listed> = shared
            .objects
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, (tag, _))| Listed {
                name: name.clone(),
                tag: tag.to_string(),
            })
            .collect();
        let pages = listed.len().div_ceil(1000).max(1) as u64;
        shared.count.lists += pages;
        shared.tick(pages as u32);
        Ok(listed)
    }
}

/// Where a host is with the release.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Old,
    Installing { since: u64 },
    RolledBack,
    Ready,
}

/// A host's memory between polls: the real policy, or the first version's.
enum Policy {
    Follower(Box<Follower>),
    EveryReport(Book),
}

struct Host {
    id: String,
    client: Client,
    policy: Policy,
    stage: Stage,
    /// Requests this host made per hour (for GitHub's per-IP limit).
    per_hour: Vec<u32>,
}

struct Outcomes {
    counts: Counts,
    peak_per_second: u32,
    /// When the peak was, in simulated seconds.
    peak_at: usize,
    hours: f64,
    /// When every host served the release (good), or the first step ended (bad).
    full_at: Option<u64>,
    received: usize,
    rolled_back: usize,
    max_host_hour: u32,
    halted: Option<String>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn simulate(hosts: usize, bad: bool, baseline: bool) -> Outcomes {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let sha = format!("{:064x}", if bad { 0xbad } else { 0x600d });
    let minutes = |m: u64| Some(Duration::from_secs(60 * m));
    let manifest = Manifest::new(
        Release::new(Some("2.0.0".into()), sha.clone()),
        epoch,
        vec![
            Step::new(1.0, minutes(10)),
            Step::new(10.0, minutes(30)),
            Step::new(50.0, minutes(30)),
            Step::new(100.0, None),
        ],
        epoch + Duration::from_secs(7 * 86_400),
    );
    let shared = Arc::new(Mutex::new(Shared::default()));
    shared
        .lock()
        .unwrap()
        .objects
        .insert(rollout::MANIFEST.into(), (0, manifest.to_json()));
    let mut fleet: Vec<Host> = (0..hosts)
        .map(|i| {
            let id = format!("host-{i:05}");
            Host {
                client: Client {
                    shared: shared.clone(),
                    held: HashMap::new(),
                    conditional: !baseline,
                },
                policy: if baseline {
                    Policy::EveryReport(Book::new())
                } else {
                    Policy::Follower(Box::new(Follower::new(id.clone())))
                },
                id,
                stage: Stage::Old,
                per_hour: Vec::new(),
            }
        })
        .collect();
    let mut rng = 0x5eed_u64;
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = (0..hosts)
        .map(|i| Reverse((splitmix(&mut rng) % INTERVAL, i)))
        .collect();
    let mut full_at = None;
    let (mut received, mut ready, mut rolled_back) = (0, 0, 0);
    let mut halted = None;
    let mut last_ms = 0;
    while let Some(Reverse((now_ms, i))) = queue.pop() {
        if now_ms > HORIZON_MS || (!bad && ready == hosts) {
            break;
        }
        last_ms = now_ms;
        shared.lock().unwrap().now_ms = now_ms;
        let before = shared.lock().unwrap().count.total();
        let host = &mut fleet[i];
        let now = at(now_ms);
        // What the pipeline would report, from where the host is.
        if let Stage::Installing { since } = host.stage {
            if bad && now_ms >= since + INSTALL_MS + CRASH_MS {
                host.stage = Stage::RolledBack;
                rolled_back += 1;
            } else if !bad && now_ms >= since + INSTALL_MS + PROBATION_MS {
                host.stage = Stage::Ready;
                ready += 1;
                if ready == hosts {
                    full_at = Some(now_ms);
                }
            }
        }
        let mine = match host.stage {
            Stage::Old => None,
            Stage::Installing { .. } => Some((Outcome::Installed, None)),
            Stage::Ready => Some((Outcome::Ready, None)),
            Stage::RolledBack => Some((Outcome::RolledBack, Some("crashed in probation".into()))),
        };
        let verdict = match &mut host.policy {
            Policy::Follower(follower) => {
                let manifest = follower.manifest(&mut host.client, &[]).await.unwrap();
                let manifest = manifest.expect("published");
                let view = follower
                    .look(&mut host.client, &manifest, mine, now)
                    .await
                    .unwrap();
                view.verdict
            }
            Policy::EveryReport(book) => {
                let manifest = rollout::read(&mut host.client, &[]).await.unwrap().unwrap();
                let reports = book.reports(&mut host.client, &sha).await.unwrap();
                if let Some((outcome, reason)) = mine {
                    let own = reports.iter().find(|r| r.host == host.id);
                    if own.is_none_or(|r| r.outcome != outcome) {
                        let report = Report::new(&host.id, &sha, outcome, reason);
                        let json = report.to_json();
                        host.client
                            .put(&rollout::report_name(&sha, &host.id), json)
                            .await
                            .unwrap();
                    }
                }
                let bucket = rollout::bucket(&host.id, &sha);
                rollout::decide(&manifest, bucket, &Tally::of(&manifest, &reports), now)
            }
        };
        match verdict {
            Verdict::Install { .. } if host.stage == Stage::Old => {
                // The fetcher's HEAD and the download.
                let mut s = shared.lock().unwrap();
                s.count.gets += 2;
                s.tick(2);
                host.stage = Stage::Installing { since: now_ms };
                received += 1;
            }
            Verdict::Halted(reason) => halted = halted.or(Some(reason)),
            _ => {}
        }
        let spent = (shared.lock().unwrap().count.total() - before) as u32;
        let hour = (now_ms / 3_600_000) as usize;
        if host.per_hour.len() <= hour {
            host.per_hour.resize(hour + 1, 0);
        }
        host.per_hour[hour] += spent;
        let jitter = splitmix(&mut rng) % (INTERVAL / 5);
        queue.push(Reverse((now_ms + INTERVAL - INTERVAL / 10 + jitter, i)));
    }
    let shared = shared.lock().unwrap();
    let mut counts = shared.count;
    // 304s do not count against an authenticated GitHub client's limit.
    counts.downloads = counts.gets + counts.lists + counts.puts;
    Outcomes {
        counts,
        peak_per_second: shared.per_second.iter().copied().max().unwrap_or(0),
        peak_at: (0..shared.per_second.len())
            .max_by_key(|&s| shared.per_second[s])
            .unwrap_or(0),
        hours: last_ms as f64 / 3_600_000.0,
        full_at,
        received,
        rolled_back,
        max_host_hour: fleet
            .iter()
            .flat_map(|h| h.per_hour.iter().copied())
            .max()
            .unwrap_or(0),
        halted,
    }
}

fn print(label: &str, hosts: usize, o: &Outcomes) {
    let c = &o.counts;
    let per_hour = c.total() as f64 / o.hours.max(1e-9);
    println!("{label} ({hosts} hosts, {:.2} h simulated)", o.hours);
    println!(
        "  requests          {} ({} GET/HEAD, {} of them 304, {} LIST pages, {} PUT)",
        c.total(),
        c.gets + c.not_modified,
        c.not_modified,
        c.lists,
        c.puts
    );
    println!(
        "  per hour          {per_hour:.0} (peak {} per second, at {} min {} s)",
        o.peak_per_second,
        o.peak_at / 60,
        o.peak_at % 60
    );
    println!(
        "  S3 cost           ${:.2} for the run, ${:.2} per day at this rate",
        c.dollars(),
        c.dollars() / o.hours.max(1e-9) * 24.0
    );
    println!(
        "  GitHub            max {} requests by one host in an hour (unauthenticated limit 60); \
         {:.0} per hour fleet-wide that are not 304 (a shared token allows 5,000)",
        o.max_host_hour,
        c.downloads as f64 / o.hours.max(1e-9)
    );
    match (o.full_at, &o.halted) {
        (Some(ms), _) => println!("  every host ready  after {:.1} min", ms as f64 / 60_000.0),
        (None, Some(reason)) => println!("  halted            {reason}"),
        (None, None) => println!("  not finished within the horizon"),
    }
    println!(
        "  received it       {} hosts ({} rolled back)",
        o.received, o.rolled_back
    );
}

fn main() {
    let hosts: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of hosts"))
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let baseline_hosts = hosts.min(1_000);
    println!("# staged rollout, 1%:10m, 10%:30m, 50%:30m, 100%; poll every 30 s ± 10 %\n");
    let good = runtime.block_on(simulate(hosts, false, false));
    print("good release", hosts, &good);
    let bad = runtime.block_on(simulate(hosts, true, false));
    print("bad release (crashes in probation)", hosts, &bad);
    let small = runtime.block_on(simulate(baseline_hosts, false, false));
    let naive = runtime.block_on(simulate(baseline_hosts, false, true));
    println!();
    print("good release, this policy", baseline_hosts, &small);
    print(
        "good release, baseline: manifest, signature and every report on every poll",
        baseline_hosts,
        &naive,
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "\nbaseline / this policy at {baseline_hosts} hosts: {:.1}x the requests, {:.1}x the S3 cost, {:.1}x the peak",
        ratio(naive.counts.total() as f64, small.counts.total() as f64),
        ratio(naive.counts.dollars(), small.counts.dollars()),
        ratio(naive.peak_per_second as f64, small.peak_per_second as f64),
    );
    let steady = hosts as f64 * 86_400_000.0 / INTERVAL as f64;
    println!(
        "once rolled out: {steady:.0} conditional GETs per day (one per poll, all 304), ${:.2} per day on S3",
        steady / 1000.0 * S3_GET
    );
}
