//! Where a candidate is run before it is trusted: the sanity run, and the user's veto hook.
//!
//! The sanity run executes the candidate with `HANDOVER_CHECK=<nonce>`. A program built on
//! handover answers `handover-check <nonce> version=<v> target=<triple>` from
//! [`Handover::run`](crate::Handover::run) and exits 0 before doing anything else. This rejects
//! files that are not executables, are built for another machine, crash, hang, or do not use
//! handover.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::master_state::SavedState;
use crate::protocol::{CHECK_REPLY, ENV_CHECK, ENV_MASTER_STATE_SAMPLE};
use crate::refusal::Refusal;

/// The target triple this crate was compiled for.
pub(crate) const TARGET: &str = env!("HANDOVER_TARGET");

/// What a candidate said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckReply {
    pub(crate) version: Option<String>,
    pub(crate) target: String,
    /// The master state format the candidate read from the sample it was given (`None`: it
    /// said nothing, as builds from before master upgrades do).
    pub(crate) master_state: Option<u32>,
}

/// Prints the sanity run's answer; called by a program started in check mode. With a sample
/// of the master's state, it also says which format it read (only if it parsed).
pub(crate) fn answer(nonce: &str, version: Option<&str>) {
    let master_state = std::env::var(ENV_MASTER_STATE_SAMPLE)
        .ok()
        .and_then(|sample| SavedState::answer(&sample))
        .map(|format| format!(" master-state={format}"))
        .unwrap_or_default();
    println!(
        "{CHECK_REPLY} {nonce} version={} target={TARGET}{master_state}",
        version.unwrap_or("-")
    );
}

/// Runs `candidate` in check mode and reads its answer.
pub(crate) async fn check(candidate: &Path, timeout: Duration) -> Result<CheckReply, Refusal> {
    let nonce = nonce();
    let sample = String::from_utf8(SavedState::sample().to_bytes()).expect("JSON is UTF-8");
    let command = crate::sys::candidate_command(
        candidate,
        &[],
        &[
            (ENV_CHECK, nonce.as_ref()),
            (ENV_MASTER_STATE_SAMPLE, sample.as_ref()),
        ],
    )
    .map_err(exec_refusal)?;
    let mut child = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec_refusal)?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut stdout = (&mut stdout).take(64 * 1024);
        let mut stderr = (&mut stderr).take(64 * 1024);
        let (_, _, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => {
            return Err(Refusal::sanity(format!(
                "sanity run did not answer within {}",
                humantime::format_duration(timeout)
            )))
        }
    };
    let status =
        status.map_err(|e| Refusal::transient(format!("waiting for the sanity run: {e}")))?;
    let stdout = String::from_utf8_lossy(&out);
    let stderr = String::from_utf8_lossy(&err);
    if !status.success() {
        return Err(Refusal::sanity(format!(
            "sanity run failed ({}){}",
            crate::signals::describe_exit(Some(status)),
            tail(&stderr)
        )));
    }
    let reply = stdout
        .lines()
        .find(|l| l.starts_with(CHECK_REPLY))
        .ok_or_else(|| {
            Refusal::sanity(format!(
                "sanity run did not answer like a handover program (printed {:?})",
                stdout.chars().take(80).collect::<String>()
            ))
        })?;
    parse_reply(reply, &nonce)
}

fn parse_reply(line: &str, nonce: &str) -> Result<CheckReply, Refusal> {
    let mut words = line.split_whitespace().skip(1);
    if words.next() != Some(nonce) {
        return Err(Refusal::sanity("sanity run answered with the wrong nonce"));
    }
    let (mut version, mut target, mut master_state) = (None, None, None);
    for word in words {
        match word.split_once('=') {
            Some(("version", v)) if v != "-" => version = Some(v.to_string()),
            Some(("target", t)) => target = Some(t.to_string()),
            Some(("master-state", f)) => master_state = f.parse().ok(),
            _ => {}
        }
    }
    let target = target.ok_or_else(|| Refusal::sanity("sanity run did not say its target"))?;
    if target != TARGET {
        return Err(Refusal::sanity(format!(
            "built for {target}, this machine runs {TARGET}"
        )));
    }
    Ok(CheckReply {
        version,
        target,
        master_state,
    })
}

/// Runs a candidate that is not built on handover with `args`; it must exit 0 in time.
pub(crate) async fn exits_zero(
    candidate: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<(), Refusal> {
    let os_args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let command = crate::sys::candidate_command(candidate, &os_args, &[]).map_err(exec_refusal)?;
    let output = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, output).await {
        Err(_) => Err(Refusal::sanity(format!(
            "sanity run did not finish within {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Err(e)) => Err(exec_refusal(e)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(Refusal::sanity(format!(
            "sanity run `{} {}` failed ({}){}",
            candidate.display(),
            args.join(" "),
            crate::signals::describe_exit(Some(out.status)),
            tail(&String::from_utf8_lossy(&out.stderr))
        ))),
    }
}

/// Runs the user's `pre_upgrade` command; a non-zero exit vetoes the upgrade.
pub(crate) async fn pre_upgrade_hook(
    command: &[String],
    candidate: &Path,
    sha256: &str,
    timeout: Duration,
) -> Result<(), Refusal> {
    let (program, args) = command.split_first().expect("validated non-empty");
    tracing::info!(hook = %program, "asking the pre_upgrade hook");
    let mut command = std::process::Command::new(program);
    crate::child_env::scrub(&mut command);
    crate::sys::die_with_master(&mut command);
    let output = tokio::process::Command::from(command)
        .args(args)
        .arg(candidate)
        .env("HANDOVER_CANDIDATE_SHA256", sha256)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, output).await {
        Err(_) => Err(Refusal::vetoed(format!(
            "pre_upgrade hook {program} did not finish in time"
        ))),
        Ok(Err(e)) => Err(Refusal::vetoed(format!(
            "pre_upgrade hook {program} could not run: {e}"
        ))),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(Refusal::vetoed(format!(
            "vetoed by pre_upgrade hook {program} ({}){}",
            crate::signals::describe_exit(Some(out.status)),
            tail(&String::from_utf8_lossy(&out.stderr))
        ))),
    }
}

/// Why a candidate could not be executed. "Text file busy" means another process still had it
/// open for writing (a child forked while it was being written): that passes, so try again.
fn exec_refusal(e: std::io::Error) -> Refusal {
    match e.raw_os_error() {
        Some(libc::ENOEXEC) => {
            Refusal::sanity("not an executable for this machine (exec format error)")
        }
        // The file system or the mode, not the bytes: not a reason to quarantine them.
        Some(libc::EACCES) => Refusal::transient("cannot be executed (permission denied)"),
        Some(libc::ETXTBSY) => {
            Refusal::transient("still open for writing somewhere (text file busy)")
        }
        _ => Refusal::sanity(format!("cannot be executed: {e}")),
    }
}

fn tail(stderr: &str) -> String {
    let last: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(3)
        .collect();
    if last.is_empty() {
        String::new()
    } else {
        let joined: Vec<&str> = last.into_iter().rev().collect();
        format!(": {}", joined.join(" | "))
    }
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_parsing() {
        let ok = parse_reply(
            &format!("handover-check n1 version=1.2.3 target={TARGET}"),
            "n1",
        )
        .unwrap();
        assert_eq!(ok.version.as_deref(), Some("1.2.3"));
        assert_eq!(ok.master_state, None);
        let with_state = parse_reply(
            &format!("handover-check n1 version=- target={TARGET} master-state=1"),
            "n1",
        )
        .unwrap();
        assert_eq!(with_state.master_state, Some(1));
        assert!(parse_reply(
            &format!("handover-check n2 version=- target={TARGET}"),
            "n1"
        )
        .is_err());
        let err =
            parse_reply("handover-check n1 version=- target=mips-unknown-none", "n1").unwrap_err();
        assert!(
            matches!(err, Refusal::SanityFailed { ref message } if message.contains("built for mips")),
            "{err:?}"
        );
    }
}
