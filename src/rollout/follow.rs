//! A host following a rollout: what it reads from the store on each poll, and how rarely.
//!
//! A fleet polls often, so each poll reads as little as it can. The manifest is one request,
//! and a store that answers conditional reads (S3) makes it a `304` when it has not changed.
//! Its signature is read only when the manifest's bytes change. The reports, the one listing
//! that grows with the fleet, are counted from their listing (never read one by one), and the
//! failures from the names in their index: when the host is about to install (the halt rule
//! must be checked then), when the manifest changes, and, while the host waits for its turn
//! in a rollout that is not halted, no more than once every [`RECOUNT`] per thousand reports,
//! for the status line. A host that has the release, or rolled it back, counts nothing more
//! until the manifest changes: a poll is one request.

use std::time::{Duration, SystemTime};

use handover_fetcher::Store;

use super::book::Count;
use super::plan::{self, Tally, Verdict};
use super::{manifest, report, Book, Manifest, Outcome, Report};
use crate::error::Error;

/// How often a host that is not about to install counts the reports again, per thousand
/// reports listed (a listing page on S3).
pub const RECOUNT: Duration = Duration::from_secs(600);

/// One host's view of the rollouts in a store, kept between polls.
#[derive(Debug)]
pub struct Follower {
    host: String,
    /// The manifest's bytes as last verified, and what they say.
    verified: Option<(Vec<u8>, Manifest)>,
    book: Book,
    counted: Option<Counted>,
    /// The report this host last wrote: release, outcome, reason.
    written: Option<(String, Outcome, Option<String>)>,
    requests: u64,
}

/// The reports as last counted.
#[derive(Debug)]
struct Counted {
    sha256: String,
    serial: u64,
    at: SystemTime,
    count: Count,
    tally: Tally,
}

/// What a host knows of the rollout after a look.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct View {
    /// This host's bucket for the release.
    pub bucket: u32,
    /// The reports, counted.
    pub tally: Tally,
    /// When they were counted.
    pub counted_at: SystemTime,
    /// What the host does now.
    pub verdict: Verdict,
}

impl Follower {
    /// A follower for the host `host_id` (see [`host_id`](super::host_id)).
    pub fn new(host_id: impl Into<String>) -> Self {
        Self {
            host: host_id.into(),
            verified: None,
            book: Book::new(),
            counted: None,
            written: None,
            requests: 0,
        }
    }

    /// The host this follower is for.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Reads the manifest in `store` and checks it with `keys` (see [`read`](super::read)):
    /// one request when its bytes are those verified last, two when they changed.
    pub async fn manifest(
        &mut self,
        store: &mut dyn Store,
        keys: &[String],
    ) -> Result<Option<Manifest>, Error> {
        self.requests += 1;
        let Some(bytes) = store.get(manifest::MANIFEST).await? else {
            self.verified = None;
            return Ok(None);
        };
        if let Some((known, manifest)) = &self.verified {
            if *known == bytes {
                return Ok(Some(manifest.clone()));
            }
        }
        self.requests += 1;
        let signature = store.get(manifest::SIGNATURE).await?;
        let manifest = super::checked(store, &bytes, signature.as_deref(), keys)?;
        self.verified = Some((bytes, manifest.clone()));
        Ok(Some(manifest))
    }

    /// Writes this host's report when `mine` (its outcome with the release, if it has one)
    /// changed since it last wrote one, counts the reports when it needs them, and decides.
    ///
    /// A host that has the release already (ready, installed, rolled back) never needs a fresh
    /// count; one that is about to install always counts first.
    pub async fn look(
        &mut self,
        store: &mut dyn Store,
        manifest: &Manifest,
        mine: Option<(Outcome, Option<String>)>,
        now: SystemTime,
    ) -> Result<View, Error> {
        let sha = manifest.release.sha256.as_str();
        let bucket = plan::bucket(&self.host, sha);
        let counted = self
            .counted
            .as_ref()
            .filter(|c| c.sha256 == sha && c.serial == manifest.serial);
        let may_install = mine.as_ref().is_none_or(|(o, _)| *o == Outcome::Refused);
        let fresh = counted.is_some_and(|c| {
            let pages = c.count.reported.div_ceil(1000).max(1) as u32;
            now.duration_since(c.at).unwrap_or_default() < RECOUNT * pages
        });
        let about_to_install = may_install
            && matches!(
                plan::decide(
                    manifest,
                    bucket,
                    &counted.map(|c| c.tally.clone()).unwrap_or_default(),
                    now
                ),
                Verdict::Install { .. }
            );
        // Once the host has the release, or the rollout is halted, only a new manifest (or
        // the host's turn) changes what it does: no recount for the status line.
        let halted = counted.is_some_and(|c| plan::halted(manifest, &c.tally).is_some());
        let recount = may_install && !halted && !fresh;
        if counted.is_none() || recount || about_to_install {
            let count = self.book.count(store, sha, &self.host).await?;
            if !count.listed {
                // Written before and gone since (or never): written again.
                self.written = None;
            }
            self.counted = Some(Counted {
                sha256: sha.to_string(),
                serial: manifest.serial,
                at: now,
                tally: Tally::counted(manifest, count.reported, &count.failures),
                count,
            });
        }
        if let Some((outcome, reason)) = mine {
            self.report(store, manifest, outcome, reason, now).await;
        }
        let counted = self.counted.as_ref().expect("counted above");
        let verdict = plan::decide(manifest, bucket, &counted.tally, now);
        Ok(View {
            bucket,
            tally: counted.tally.clone(),
            counted_at: counted.at,
            verdict,
        })
    }

    /// Requests made to the store so far: manifest and signature reads, listings, report
    /// reads and writes.
    pub fn requests(&self) -> u64 {
        self.requests + self.book.requests()
    }

    async fn report(
        &mut self,
        store: &mut dyn Store,
        manifest: &Manifest,
        outcome: Outcome,
        reason: Option<String>,
        now: SystemTime,
    ) {
        let sha = manifest.release.sha256.as_str();
        let wanted = (sha.to_string(), outcome, reason.clone());
        if self.written.as_ref() == Some(&wanted) {
            return;
        }
        let report = Report {
            host: self.host.clone(),
            sha256: sha.to_string(),
            outcome,
            reason,
            at: now,
        };
        // A failure is indexed first: a host that sees the report sees the failure too.
        let mut names = vec![report::name(sha, &self.host)];
        if outcome.failed() {
            names.insert(0, report::failure_name(&report));
        }
        for name in &names {
            self.requests += 1;
            if let Err(e) = store.put(name, report.to_json()).await {
                tracing::warn!(error = %e, report = %store.locate(name),
                    "cannot write this host's rollout report; trying again at the next poll");
                return;
            }
        }
        tracing::info!(outcome = outcome.as_str(), report = %store.locate(&names[names.len() - 1]), "rollout report written");
        self.written = Some(wanted);
        if let Some(counted) = self.counted.as_mut().filter(|c| c.sha256 == sha) {
            if !counted.count.listed {
                counted.count.listed = true;
                counted.count.reported += 1;
            }
            if outcome.failed() {
                counted.count.failures.retain(|r| r.host != report.host);
                counted.count.failures.push(report);
            }
            counted.tally =
                Tally::counted(manifest, counted.count.reported, &counted.count.failures);
        }
    }
}
