//! Handover, cloudflare/tableflip and a naive restart side by side: the same wrk load and
//! restart count for each (handover's is the wrk phase the bench ran first), then the bench's
//! own HTTP/1.1 hyper client under the same restarts, counted per 100 ms for the chart.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::client::{Load, LoadSpec, Outcome, Protocol};
use crate::master::Master;
use crate::peers::{self, Naive, Tableflip};
use crate::phases::{self, restart_figures, Restartable, Shape};
use crate::report::{RestartFigures, Settings, WrkPhase};
use crate::{say, wrk, CHART_BUCKET_US, REQUEST_TIMEOUT};

/// The tableflip and naive columns (handover's wrk figures are `Results::wrk`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Comparison {
    pub(crate) tableflip_wrk: Option<WrkPhase>,
    pub(crate) naive_wrk: Option<WrkPhase>,
    /// Why the tableflip column is empty (no Go, no tableflip, a failed build or run).
    pub(crate) tableflip_skipped: Option<String>,
    /// Why the naive column is empty (it failed to run).
    pub(crate) naive_skipped: Option<String>,
    /// The hyper client (HTTP/1.1) under the same restarts: handover, tableflip, naive.
    pub(crate) client: Vec<ClientRun>,
}

/// The hyper client's view of one server under restarts.
#[derive(Debug, Serialize)]
pub(crate) struct ClientRun {
    pub(crate) name: String,
    pub(crate) restarts: RestartFigures,
    pub(crate) seconds: f64,
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) error_samples: Vec<String>,
    /// Per 100 ms since the load started.
    pub(crate) buckets: Vec<CountBucket>,
    /// Restart signals, in seconds since the load started.
    pub(crate) restart_times: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct CountBucket {
    pub(crate) t: f64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
}

pub(crate) fn run(
    master: &mut Master,
    settings: &Settings,
    epoch: Instant,
    logs: &Path,
    scratch: &Path,
) -> anyhow::Result<Comparison> {
    let shape = Shape::of(settings);
    let mut comparison = Comparison::default();
    comparison
        .client
        .push(client_run(master, "handover", settings, epoch)?);

    match peers::build_tableflip(scratch, logs) {
        Err(why) => {
            eprintln!("bench: {why}");
            comparison.tableflip_skipped = Some(why);
        }
        Ok(binary) => {
            let measured = (|| -> anyhow::Result<(Option<WrkPhase>, ClientRun)> {
                let mut server = Tableflip::start(&binary, &scratch.join("tableflip"), logs)?;
                let wrk = wrk::available()
                    .then(|| {
                        phases::wrk_phase(&mut server, shape, settings, epoch, logs, "tableflip")
                    })
                    .transpose()?;
                let client = client_run(&mut server, "tableflip", settings, epoch)?;
                Ok((wrk, client))
            })();
            match measured {
                Ok((wrk, client)) => {
                    comparison.tableflip_wrk = wrk;
                    comparison.client.push(client);
                }
                Err(e) => {
                    eprintln!("\nbench: the tableflip column failed: {e:#}");
                    comparison.tableflip_skipped = Some(format!("failed: {e:#}"));
                }
            }
        }
    }

    let measured = (|| -> anyhow::Result<(Option<WrkPhase>, ClientRun)> {
        let mut server = Naive::start(settings.server_threads)?;
        let wrk = wrk::available()
            .then(|| phases::wrk_phase(&mut server, shape, settings, epoch, logs, "naive"))
            .transpose()?;
        let client = client_run(&mut server, "naive restart", settings, epoch)?;
        Ok((wrk, client))
    })();
    match measured {
        Ok((wrk, client)) => {
            comparison.naive_wrk = wrk;
            comparison.client.push(client);
        }
        Err(e) => {
            eprintln!("\nbench: the naive-restart column failed: {e:#}");
            comparison.naive_skipped = Some(format!("failed: {e:#}"));
        }
    }
    Ok(comparison)
}

/// The hyper client (HTTP/1.1, the same connections as every phase) while `server` restarts
/// `settings.restarts` times.
fn client_run(
    server: &mut dyn Restartable,
    name: &str,
    settings: &Settings,
    epoch: Instant,
) -> anyhow::Result<ClientRun> {
    say(&format!("[{name}] hyper client (HTTP/1.1) under restarts"));
    let spec = LoadSpec {
        addr: server.addr(),
        protocol: Protocol::Http1,
        fast_connections: settings.connections - settings.slow_connections,
        slow_connections: settings.slow_connections,
        slow_path: settings.slow_path.clone(),
        timeout: REQUEST_TIMEOUT,
        threads: settings.client_threads,
    };
    let load = Load::start(spec, epoch);
    let tag = format!("{name}, hyper");
    let restarts = phases::drive_restarts(server, settings.restarts, settings, epoch, &tag)?;
    let run = load.finish()?;
    let started_us = run.started.as_micros() as u64;
    let length_us = (run.stopped - run.started).as_micros() as u64;
    let mut buckets: Vec<CountBucket> = (0..=length_us / CHART_BUCKET_US)
        .map(|i| CountBucket {
            t: (i * CHART_BUCKET_US) as f64 / 1e6,
            ok: 0,
            failed: 0,
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for record in &run.records {
        let index = (record.start_us.saturating_sub(started_us) / CHART_BUCKET_US) as usize;
        let bucket = buckets.get_mut(index);
        if record.outcome == Outcome::Ok {
            ok += 1;
            bucket.into_iter().for_each(|b| b.ok += 1);
        } else if record.outcome.failed() {
            failed += 1;
            bucket.into_iter().for_each(|b| b.failed += 1);
        }
    }
    Ok(ClientRun {
        name: name.into(),
        restarts: restart_figures(&restarts),
        seconds: (run.stopped - run.started).as_secs_f64(),
        requests: run.records.len() as u64,
        ok,
        failed,
        error_samples: run.errors,
        buckets,
        restart_times: restarts
            .iter()
            .map(|r| r.signal.saturating_sub(run.started).as_secs_f64())
            .collect(),
    })
}
