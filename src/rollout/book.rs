//! The reports about one release as last read: listing is one request per thousand reports,
//! and only documents whose tag changed since are read again.

use std::collections::{HashMap, HashSet};

use handover_fetcher::{FetchError, Store};

use super::report::{self, Report};

/// A reader of the reports about releases, keeping what it read.
#[derive(Debug, Default)]
pub struct Book {
    /// Document name → (tag, report; `None` for a document that is not a report).
    read: HashMap<String, (String, Option<Report>)>,
    /// Requests made: lists and reads.
    requests: u64,
}

/// What a host needs for the halt rule: how many hosts reported, and the failures.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Count {
    /// Hosts with a report (listed, not read).
    pub reported: usize,
    /// Whether the host asked about has one.
    pub listed: bool,
    /// The failure index, from the names (no reasons).
    pub failures: Vec<Report>,
}

impl Book {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every report about the release with `sha256`, one per host, read from `store` (the
    /// publisher's view).
    pub async fn reports(
        &mut self,
        store: &mut dyn Store,
        sha256: &str,
    ) -> Result<Vec<Report>, FetchError> {
        let prefix = report::prefix(sha256);
        self.read_all(store, &prefix, |r| report::name(sha256, &r.host))
            .await
    }

    /// The failure index of the release with `sha256`, read (with the reasons).
    pub async fn failures(
        &mut self,
        store: &mut dyn Store,
        sha256: &str,
    ) -> Result<Vec<Report>, FetchError> {
        let prefix = report::failures_prefix(sha256);
        self.read_all(store, &prefix, report::failure_name).await
    }

    /// The reports about the release with `sha256` and its failure index, from their listings
    /// alone (no report is read): a host's view. `host` is the host asking.
    pub async fn count(
        &mut self,
        store: &mut dyn Store,
        sha256: &str,
        host: &str,
    ) -> Result<Count, FetchError> {
        let prefix = report::prefix(sha256);
        let listed = store.list(&prefix).await?;
        self.requests += 1;
        let own = report::name(sha256, host);
        let mut count = Count::default();
        for entry in &listed {
            if let Some(rest) = entry.name.strip_prefix(&prefix) {
                if rest.ends_with(".json") && !rest.contains('/') {
                    count.reported += 1;
                    count.listed |= entry.name == own;
                }
            }
        }
        let failures = store.list(&report::failures_prefix(sha256)).await?;
        self.requests += 1;
        count.failures = failures
            .iter()
            .filter_map(|entry| report::parse_failure_name(sha256, &entry.name))
            .collect();
        Ok(count)
    }

    async fn read_all(
        &mut self,
        store: &mut dyn Store,
        prefix: &str,
        name: impl Fn(&Report) -> String,
    ) -> Result<Vec<Report>, FetchError> {
        let listed = store.list(prefix).await?;
        self.requests += 1;
        let names: HashSet<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        self.read
            .retain(|n, _| !n.starts_with(prefix) || names.contains(n.as_str()));
        let mut reports = Vec::with_capacity(listed.len());
        for entry in listed {
            let known = self
                .read
                .get(&entry.name)
                .filter(|(tag, _)| *tag == entry.tag);
            let parsed = match known {
                Some((_, parsed)) => parsed.clone(),
                None => {
                    self.requests += 1;
                    let parsed = store
                        .get(&entry.name)
                        .await?
                        .and_then(|bytes| Report::parse(&bytes));
                    self.read
                        .insert(entry.name.clone(), (entry.tag, parsed.clone()));
                    parsed
                }
            };
            // A report is trusted for the host its name says, whatever it claims inside.
            if let Some(report) = parsed.filter(|r| entry.name == name(r)) {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Requests made to the store so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }
}
