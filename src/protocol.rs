//! What the master and its workers say to each other: environment variables and the control
//! channel's messages.
//!
//! A worker is started with its listeners at fixed descriptors, from 3 upwards in the order of
//! the configuration (as systemd does), and the control channel right after them. The
//! environment says where everything is:
//!
//! | variable | meaning |
//! |---|---|
//! | `HANDOVER_FDS` | how many listeners, at fds 3, 4, … |
//! | `HANDOVER_FD_NAMES` | their names, `:`-separated, in fd order |
//! | `HANDOVER_CONTROL_FD` | the control channel (a Unix stream socket) |
//! | `HANDOVER_WORKER_ID` | this worker's number, 1 for the first |
//! | `HANDOVER_MASTER_PID` | the master's PID |
//! | `HANDOVER_BINARY` | the live binary's path, as the master sees it |
//! | `HANDOVER_BINARY_SHA256` | SHA-256 of the binary the worker was started from |
//! | `HANDOVER_IDLE_GRACE_MS` | how long idle keep-alive connections are kept after drain begins |
//! | `HANDOVER_DRAIN_TIMEOUTS_MS` | each listener's drain timeout, `:`-separated, in fd order |
//! | `HANDOVER_STOP_DRAIN_TIMEOUT_MS` | the drain timeout when the master stops, if set apart |
//! | `HANDOVER_CHECK` | set (to a nonce) only for the sanity run of an upgrade candidate |
//! | `HANDOVER_MASTER_STATE_SAMPLE` | in the sanity run: a sample of the master's state, which a candidate that can take over the master parses, answering `master-state=<format>` |
//! | `HANDOVER_MASTER_STATE` | only in a master that re-executed itself: the descriptor of the sealed memfd with the state it takes over (see `master_state`) |
//!
//! The control channel carries one word per line. Worker to master: `ready`, `restart` (ask
//! for a hand-over), `released` (its exclusive jobs have stopped), `open <n>` (while draining:
//! connections still open). Master to worker: `drain` (stop accepting and finish), `stopping`
//! (sent before `drain` when the master stops), `grant` (exclusive jobs may start). End of file from the master
//! means the master is gone: the worker drains and exits.

pub(crate) const ENV_FDS: &str = "HANDOVER_FDS";
pub(crate) const ENV_FD_NAMES: &str = "HANDOVER_FD_NAMES";
pub(crate) const ENV_CONTROL_FD: &str = "HANDOVER_CONTROL_FD";
pub(crate) const ENV_WORKER_ID: &str = "HANDOVER_WORKER_ID";
pub(crate) const ENV_MASTER_PID: &str = "HANDOVER_MASTER_PID";
pub(crate) const ENV_BINARY: &str = "HANDOVER_BINARY";
pub(crate) const ENV_BINARY_SHA256: &str = "HANDOVER_BINARY_SHA256";
pub(crate) const ENV_IDLE_GRACE_MS: &str = "HANDOVER_IDLE_GRACE_MS";
pub(crate) const ENV_DRAIN_TIMEOUTS_MS: &str = "HANDOVER_DRAIN_TIMEOUTS_MS";
pub(crate) const ENV_STOP_DRAIN_TIMEOUT_MS: &str = "HANDOVER_STOP_DRAIN_TIMEOUT_MS";
pub(crate) const ENV_CHECK: &str = "HANDOVER_CHECK";
pub(crate) const ENV_MASTER_STATE_SAMPLE: &str = "HANDOVER_MASTER_STATE_SAMPLE";
pub(crate) const ENV_MASTER_STATE: &str = "HANDOVER_MASTER_STATE";

/// The version of the state a master hands to the code it re-executes into. A candidate that
/// answers another (or none) is installed for workers only.
pub(crate) const MASTER_STATE_FORMAT: u32 = 1;

/// Every variable the master sets, removed before a worker starts its own children.
/// When the master spawned the worker (CLOCK_MONOTONIC, µs): the worker logs its start-up.
pub(crate) const ENV_SPAWNED_AT_US: &str = "HANDOVER_SPAWNED_AT_US";
/// Every variable above, removed from a worker's environment once read.
pub(crate) const ALL_ENV: [&str; 14] = [
    ENV_FDS,
    ENV_FD_NAMES,
    ENV_CONTROL_FD,
    ENV_WORKER_ID,
    ENV_MASTER_PID,
    ENV_BINARY,
    ENV_BINARY_SHA256,
    ENV_IDLE_GRACE_MS,
    ENV_DRAIN_TIMEOUTS_MS,
    ENV_STOP_DRAIN_TIMEOUT_MS,
    ENV_CHECK,
    ENV_MASTER_STATE_SAMPLE,
    ENV_MASTER_STATE,
    ENV_SPAWNED_AT_US,
];

/// The CLOCK_MONOTONIC time in µs: the same clock in every process of the machine.
pub(crate) fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The first descriptor a worker's listeners are passed at.
pub(crate) const FIRST_FD: i32 = 3;

/// The sanity run's answer starts with this word.
pub(crate) const CHECK_REPLY: &str = "handover-check";

/// A control-channel message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Ready,
    Restart,
    Released,
    /// Worker to master, while draining: how many connections it still has open.
    Open(u64),
    /// Master to worker, before `drain` when the master stops: the stop's drain timeout applies.
    /// A worker from before this message logs it as unknown and drains on `drain` as before.
    Stopping,
    Drain,
    Grant,
}

impl Message {
    pub(crate) fn as_line(self) -> std::borrow::Cow<'static, [u8]> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            Message::Ready => Borrowed(b"ready\n"),
            Message::Restart => Borrowed(b"restart\n"),
            Message::Released => Borrowed(b"released\n"),
            Message::Open(n) => Owned(format!("open {n}\n").into_bytes()),
            Message::Stopping => Borrowed(b"stopping\n"),
            Message::Drain => Borrowed(b"drain\n"),
            Message::Grant => Borrowed(b"grant\n"),
        }
    }

    pub(crate) fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("open ") {
            return n.parse().ok().map(Message::Open);
        }
        Some(match line {
            "ready" => Message::Ready,
            "restart" => Message::Restart,
            "released" => Message::Released,
            "stopping" => Message::Stopping,
            "drain" => Message::Drain,
            "grant" => Message::Grant,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Ready,
            Message::Restart,
            Message::Released,
            Message::Open(0),
            Message::Open(1234),
            Message::Stopping,
            Message::Drain,
            Message::Grant,
        ] {
            let bytes = m.as_line();
            let line = std::str::from_utf8(&bytes).unwrap();
            assert_eq!(Message::parse(line), Some(m));
        }
        assert_eq!(Message::parse("bogus"), None);
        assert_eq!(Message::parse("open many"), None);
    }
}
