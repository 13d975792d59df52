//! The hello service with faults to inject, for handover's own tests.
//!
//! A fault is chosen by a trailer appended to the binary file itself, so that each copy of the
//! binary behaves like a different release: `\nHANDOVER-FAULT:<fault>\n` where fault is
//! `exit-at-start`, `never-ready`, `slow-ready:<ms>`, `crash-after-ready:<ms>` or `version:<semver>` (answers that
//! version in the sanity run), or `master-state:<format>|none` (answers the sanity run as a
//! build that reads another master state format, or, with `none`, as one from before master
//! upgrades). `HELLO_MARK` names a file the program closure appends its PID to,
//! proving where it runs; `HELLO_ENV_DUMP` names a file each worker writes its whole
//! environment to (`NAME=VALUE` lines), showing what the master passed on.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

fn trailer() -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open("/proc/self/exe") else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(512)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail)
        .lines()
        .filter_map(|l| l.strip_prefix("HANDOVER-FAULT:").map(str::to_string))
        .collect()
}

fn main() -> std::process::ExitCode {
    common::exit_code("testbed", run())
}

fn run() -> Result<(), handover::Error> {
    common::init_logging();
    let faults = trailer();
    // A copy of an upgraded binary carries several trailers: the last one is the newest label.
    let version = faults
        .iter()
        .rev()
        .find_map(|f| f.strip_prefix("version:"))
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    if let Ok(nonce) = std::env::var("HANDOVER_CHECK") {
        if let Some(format) = faults.iter().find_map(|f| f.strip_prefix("master-state:")) {
            let state = match format {
                "none" => String::new(),
                format => format!(" master-state={format}"),
            };
            let target = env!("HANDOVER_TARGET");
            println!("handover-check {nonce} version={version} target={target}{state}");
            return Ok(());
        }
    }
    let config = common::config_from_env()?;
    handover::Handover::new(config)
        .version(&version)
        .run(|worker| async move {
            if let Some(mark) = std::env::var_os("HELLO_MARK") {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(mark)
                    .expect("mark file");
                writeln!(file, "{}", std::process::id()).expect("mark file");
            }
            if let Some(dump) = std::env::var_os("HELLO_ENV_DUMP") {
                let text: String = std::env::vars_os()
                    .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
                    .collect();
                // Whole or not at all: a test may be reading the previous worker's.
                let dump = std::path::PathBuf::from(dump);
                let partial = dump.with_extension("partial");
                std::fs::write(&partial, text).expect("env dump");
                std::fs::rename(&partial, &dump).expect("env dump");
            }
            for fault in &faults {
                match fault.split_once(':').unwrap_or((fault.as_str(), "")) {
                    ("exit-at-start", _) => std::process::exit(3),
                    ("never-ready", _) => {
                        worker.shutdown().await;
                        return Ok(());
                    }
                    ("slow-ready", ms) => {
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await
                    }
                    ("crash-after-ready", ms) => {
                        let ms: u64 = ms.parse().unwrap_or(2000);
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(ms));
                            std::process::abort();
                        });
                    }
                    _ => {}
                }
            }
            common::spawn_logging_job(&worker);
            common::serve_hello(worker, true).await
        })
}
