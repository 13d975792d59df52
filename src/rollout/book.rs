//! The reports about one release as last read: listing is one request, and only reports whose
//! tag changed since are read again.

use std::collections::HashMap;

use handover_fetcher::{FetchError, Store};

use super::report::{self, Report};

/// A reader of the reports about releases, keeping what it read.
#[derive(Debug, Default)]
pub struct Book {
    /// Report name → (tag, report; `None` for a document that is not a report).
    read: HashMap<String, (String, Option<Report>)>,
    /// Requests made: lists and reads.
    requests: u64,
}

impl Book {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reports about the release with `sha256`, one per host, read from `store`.
    pub async fn reports(
        &mut self,
        store: &mut dyn Store,
        sha256: &str,
    ) -> Result<Vec<Report>, FetchError> {
        let prefix = report::prefix(sha256);
        let listed = store.list(&prefix).await?;
        self.requests += 1;
        self.read
            .retain(|name, _| !name.starts_with(&prefix) || listed.iter().any(|l| &l.name == name));
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
            if let Some(report) = parsed.filter(|r| entry.name == report::name(sha256, &r.host)) {
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
