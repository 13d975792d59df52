//! How small a delta patch is: two consecutive release builds of the `hello` example (they
//! differ in one literal, the version, as two builds of a real service differ in a few
//! lines), the patch `handover rollout patch` would publish from one to the other, and the
//! time to make and to apply it.
//!
//! ```sh
//! cargo run --release --example delta_size                 # builds hello three times
//! cargo run --release --example delta_size -- OLD NEW      # any two builds
//! ```
//!
//! The figures go to standard output (and `examples/bench/results/delta_size.txt` when run
//! without arguments).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use handover::rollout::delta;
use sha2::Digest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let report = match args.as_slice() {
        [old, new] => measure(
            "two given builds",
            &std::fs::read(old)?,
            &std::fs::read(new)?,
        )?,
        [] => {
            let scratch = tempfile::tempdir()?;
            let build = |version: &str| build_hello(version, &scratch.path().join(version));
            let old = build("0.1.0")?;
            let same_length = build("0.1.1")?;
            let longer = build("0.1.1-rc.1")?;
            let report =
                format!(
                "delta patches between consecutive release builds of examples/hello.rs, which\n\
                 differ in the version literal (HELLO_VERSION); zstd level 3, long-distance\n\
                 matching, the old build as reference prefix: what `handover rollout patch`\n\
                 publishes\n\n{}\n{}",
                measure("0.1.0 -> 0.1.1 (same length)", &old, &same_length)?,
                measure("0.1.0 -> 0.1.1-rc.1 (longer: later strings move)", &old, &longer)?,
            );
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench/results");
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("delta_size.txt"), &report)?;
            report
        }
        _ => return Err("usage: delta_size [OLD NEW]".into()),
    };
    print!("{report}");
    Ok(())
}

/// The figures for a patch from `old` to `new`.
fn measure(title: &str, old: &[u8], new: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let sha = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    if sha(old) == sha(new) {
        return Err(format!("{title}: the two builds are the same binary").into());
    }
    let started = Instant::now();
    let patch = delta::make_patch(old, new)?;
    let make = started.elapsed();
    let started = Instant::now();
    let made = delta::apply_patch(old, &patch, new.len() as u64)?;
    let apply = started.elapsed();
    assert_eq!(sha(&made), sha(new), "the patch makes the new build");
    let started = Instant::now();
    let plain = zstd::bulk::compress(new, 3)?;
    let compress = started.elapsed();
    let percent = |n: usize| 100.0 * n as f64 / new.len() as f64;
    Ok(format!(
        "{title}\n\
         full binary (new)      {:>12} B\n\
         delta patch            {:>12} B   {:.2} % of the binary\n\
         plain zstd of the new  {:>12} B   {:.2} %   ({:.2} s)\n\
         make the patch         {:>12.2} s\n\
         apply the patch        {:>12.0} ms  (sha256 of the result checked: {})\n",
        group(new.len()),
        group(patch.len()),
        percent(patch.len()),
        group(plain.len()),
        percent(plain.len()),
        compress.as_secs_f64(),
        make.as_secs_f64(),
        apply.as_secs_f64() * 1000.0,
        &sha(new)[..12],
    ))
}

/// `cargo build --release --example hello` with `HELLO_VERSION=version`, copied to `copy`.
fn build_hello(version: &str, copy: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--example", "hello"])
        .args(["--message-format", "json-render-diagnostics"])
        .env("HELLO_VERSION", version)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let executable = String::from_utf8(output.stdout)?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "hello")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or("cargo named no hello executable")?;
    std::fs::copy(&executable, copy)?;
    Ok(std::fs::read(copy)?)
}

/// `8179040` → `8,179,040`.
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
