//! Shows a long download: a bar on a terminal when the application asks for one, else a log
//! line every few seconds.

/// Shows a long download: a bar on a terminal, a log line every few seconds otherwise.
pub(crate) struct Progress {
    origin: String,
    total: Option<u64>,
    started: std::time::Instant,
    last: std::time::Instant,
    terminal: bool,
    shown: bool,
}

impl Progress {
    /// Downloads shorter than this are not worth a progress display.
    const QUIET_FOR: std::time::Duration = std::time::Duration::from_secs(1);

    pub(crate) fn new(origin: &str, total: Option<u64>, bar: bool) -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Self {
            origin: origin.to_string(),
            total,
            started: now,
            last: now,
            terminal: bar && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    pub(crate) fn advance(&mut self, done: u64) {
        let every = if self.terminal {
            std::time::Duration::from_millis(100)
        } else {
            std::time::Duration::from_secs(5)
        };
        if self.started.elapsed() < Self::QUIET_FOR || self.last.elapsed() < every {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rate = mib(done) / self.started.elapsed().as_secs_f64().max(0.001);
        match self.total {
            Some(total) if self.terminal => {
                let fraction = (done as f64 / total.max(1) as f64).min(1.0);
                let filled = (fraction * 30.0) as usize;
                eprint!(
                    "\r{} [{}{}] {:>3.0}% {:.1}/{:.1} MiB {:.1} MiB/s ",
                    self.origin,
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    fraction * 100.0,
                    mib(done),
                    mib(total),
                    rate
                );
            }
            None if self.terminal => {
                eprint!("\r{} {:.1} MiB {:.1} MiB/s ", self.origin, mib(done), rate)
            }
            total => tracing::info!(
                origin = %self.origin,
                done_mib = format!("{:.1}", mib(done)),
                total_mib = total.map(|t| format!("{:.1}", mib(t))),
                rate_mib_s = format!("{rate:.1}"),
                "downloading"
            ),
        }
    }

    pub(crate) fn finish(&mut self, done: u64) {
        if self.shown && self.terminal {
            eprintln!(
                "\r{} done: {:.1} MiB in {:.1?}",
                self.origin,
                done as f64 / (1024.0 * 1024.0),
                self.started.elapsed()
            );
        }
    }
}
