//! The markdown tables beyond the first: handover, tableflip and a naive restart side by side;
//! upgrades (file, S3, GitHub) with their stage breakdown; the master.

use std::fmt::Write as _;

use crate::report::{mib, thousands, Results, WrkPhase};
use crate::stats::short;
use crate::upgrades::Stage;

/// Under the same wrk load and restart count: handover | tableflip | naive restart, and
/// handover again at many connections and restarts.
pub(crate) fn comparison(md: &mut String, r: &Results) {
    let c = &r.comparison;
    let s = &r.settings;
    let columns: [(String, Option<&WrkPhase>, Option<&str>); 4] = [
        ("handover".into(), r.wrk.as_ref(), r.wrk_skipped.as_deref()),
        (
            "tableflip".into(),
            c.tableflip_wrk.as_ref(),
            c.tableflip_skipped.as_deref(),
        ),
        (
            "naive restart".into(),
            c.naive_wrk.as_ref(),
            c.naive_skipped.as_deref(),
        ),
        (
            format!(
                "handover, {} connections × {} restarts",
                s.big_connections, s.big_restarts
            ),
            r.big.as_ref(),
            r.wrk_skipped.as_deref(),
        ),
    ];
    let _ = writeln!(
        md,
        "\n**Side by side** (wrk, HTTP/1.1, {} connections, {} restarts each; tableflip restarts on \
         SIGHUP, the naive restart stops plain hyper and starts it again on the same port):\n",
        s.connections, s.restarts
    );
    let mut header = "| Under restarts, wrk |".to_string();
    let mut rule = "|---|".to_string();
    for (name, _, _) in &columns {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let handover_rps = r.wrk.as_ref().map(|w| w.requests_per_second);
    let row = |md: &mut String, label: &str, cell: &dyn Fn(&WrkPhase) -> String| {
        let mut line = format!("| {label} |");
        for (_, phase, skipped) in &columns {
            let text = match (phase, skipped) {
                (Some(phase), _) => cell(phase),
                (None, Some(_)) => "skipped".into(),
                (None, None) => "–".into(),
            };
            line.push_str(&format!(" {text} |"));
        }
        let _ = writeln!(md, "{line}");
    };
    row(md, "restarts", &|w| w.restarts.count.to_string());
    row(md, "requests", &|w| thousands(w.requests));
    row(
        md,
        "**failed requests** (connect / read / write / timeout / non-2xx)",
        &|w| {
            let (f, l) = (&w.fast, &w.slow);
            format!(
                "**{}** ({} / {} / {} / {} / {})",
                thousands(w.failed),
                thousands(f.connect_errors + l.connect_errors),
                thousands(f.read_errors + l.read_errors),
                thousands(f.write_errors + l.write_errors),
                thousands(f.timeouts + l.timeouts),
                thousands(f.non_2xx_3xx + l.non_2xx_3xx)
            )
        },
    );
    row(
        md,
        "hand-over time p50 / p99 (signal, or stop, → new pid answers)",
        &|w| {
            let d = &w.restarts.handover_ms;
            if d.count == 0 {
                "–".into()
            } else {
                format!("{} / {} ms", short(d.p50_ms), short(d.p99_ms))
            }
        },
    );
    row(md, "restarts with no new pid or an old one left", &|w| {
        w.restarts.incomplete.to_string()
    });
    row(md, "throughput, req/s", &|w| {
        thousands(w.requests_per_second as u64)
    });
    row(md, "throughput relative to handover (same load)", &|w| {
        handover_rps.map_or("–".into(), |h| {
            format!("{:.2}", w.requests_per_second / h.max(1e-9))
        })
    });
    row(
        md,
        "RSS after the restarts (handover: master + worker)",
        &|w| mib(w.rss_kib),
    );

    // The hyper client under the same restarts (what the chart's lower panels show).
    if !c.client.is_empty() {
        let _ = writeln!(
            md,
            "\nThe bench's hyper client (HTTP/1.1, no retries) under the same {} restarts:\n",
            s.restarts
        );
        let names: Vec<&str> = c.client.iter().map(|run| run.name.as_str()).collect();
        let _ = writeln!(
            md,
            "| Under restarts, hyper client | {} |\n|---|{}",
            names.join(" | "),
            "---:|".repeat(names.len())
        );
        let cells = |f: &dyn Fn(&crate::compare::ClientRun) -> String| {
            c.client.iter().map(f).collect::<Vec<_>>().join(" | ")
        };
        let _ = writeln!(
            md,
            "| requests | {} |",
            cells(&|run| thousands(run.requests))
        );
        let _ = writeln!(
            md,
            "| **failed requests** | {} |",
            cells(&|run| format!("**{}**", thousands(run.failed)))
        );
        let _ = writeln!(
            md,
            "| hand-over time p50 / p99 | {} |",
            cells(&|run| {
                let d = &run.restarts.handover_ms;
                format!("{} / {} ms", short(d.p50_ms), short(d.p99_ms))
            })
        );
    }
    let _ = writeln!(
        md,
        "\nThe tableflip demo serves with Go's net/http, the others with hyper: its throughput \
         differs for that reason too, not only its restarts. Its RSS is the one process serving; \
         handover's is the master and its worker."
    );
    for (name, _, skipped) in &columns[1..3] {
        if let Some(why) = skipped {
            let _ = writeln!(md, "\n{name}: {why}");
        }
    }
}

/// `… where it went, <when> (p50)`: master spawn, then the worker's exec, runtime and
/// program until ready.
fn handover_breakdown_row(md: &mut String, when: &str, stages: &[Stage]) {
    let _ = writeln!(
        md,
        "| … where it went, {when} (p50) | {} |",
        stages_cell(stages)
    );
}

/// `… stage breakdown (p50)`: `download 3.1 ms, verify 0.4 ms, …`, or `–` when the master
/// logged no stage line.
pub(crate) fn breakdown_row(md: &mut String, stages: &[Stage]) {
    let _ = writeln!(md, "| … stage breakdown (p50) | {} |", stages_cell(stages));
}

fn stages_cell(stages: &[Stage]) -> String {
    if stages.is_empty() {
        return "–".to_string();
    }
    stages
        .iter()
        .map(|stage| format!("{} {} ms", stage.name, short(stage.p50_ms)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Publish → serving through S3 and GitHub, with the target (interval + 200 ms).
pub(crate) fn remote_rows(md: &mut String, r: &Results) {
    for row in &r.remote {
        let what = match row.fetcher.as_str() {
            "s3" => "S3 object uploaded (moto)",
            _ => "GitHub release published (fake API)",
        };
        let Some(phase) = &row.phase else {
            let why = row.skipped.as_deref().unwrap_or("not run");
            let why = why.lines().next().unwrap_or(why);
            let _ = writeln!(
                md,
                "| upgrade, {what} → new sha256 answering | skipped: {why} |"
            );
            continue;
        };
        let d = &phase.latency_ms;
        let target = phase.poll_interval_ms as f64 + 200.0;
        let value = if d.count == 0 {
            format!("no upgrade completed ({} failed)", phase.failures.len())
        } else {
            format!(
                "{} / {} ms (p50 / max of {}; target ≤ {} ms: {})",
                short(d.p50_ms),
                short(d.max_ms),
                d.count,
                target,
                if d.max_ms <= target { "met" } else { "missed" }
            )
        };
        let _ = writeln!(
            md,
            "| upgrade, {what} → new sha256 answering, polling every {} ms, no jitter | {value} |",
            phase.poll_interval_ms
        );
        breakdown_row(md, &phase.breakdown);
    }
}

/// Upgrades (file, then remote) and the master's own figures.
pub(crate) fn upgrades_and_master(md: &mut String, r: &Results) {
    let _ = writeln!(md, "\n| Upgrades and the master | |");
    let _ = writeln!(md, "|---|---:|");
    for upgrade in &r.upgrade {
        let how = if upgrade.mode == "inotify" {
            "inotify".to_string()
        } else {
            format!("polling every {} ms", upgrade.poll_interval_ms)
        };
        let d = &upgrade.latency_ms;
        let value = if d.count == 0 {
            "no upgrade completed".to_string()
        } else {
            format!(
                "{} / {} ms (p50 / max of {})",
                short(d.p50_ms),
                short(d.max_ms),
                d.count
            )
        };
        let _ = writeln!(
            md,
            "| upgrade, file landing → new sha256 answering, {how} | {value} |"
        );
        breakdown_row(md, &upgrade.breakdown);
    }
    remote_rows(md, r);
    let _ = writeln!(
        md,
        "| hand-over time under load, all {} restarts above | {} |",
        r.handover_time_under_load_ms.count,
        r.handover_time_under_load_ms.cell()
    );
    handover_breakdown_row(md, "under load", &r.handover_breakdown_under_load);
    let master = &r.master;
    let _ = writeln!(
        md,
        "| master RSS, idle, polling every {} ms (PSS; anonymous) | {} ({}; {}) |",
        master.poll_interval_ms,
        mib(master.rss_kib_idle),
        mib(master.pss_kib_idle),
        mib(master.anon_kib_idle)
    );
    let cpu = if master.idle_cpu_seconds == 0.0 {
        format!("< {:.2} % of a core", master.idle_cpu_resolution_percent)
    } else {
        format!("{:.2} % of a core", master.idle_cpu_percent)
    };
    let _ = writeln!(
        md,
        "| master CPU, idle, over {:.0} s | {cpu} |",
        master.idle_window_seconds
    );
    let soak = &master.soak;
    let _ = writeln!(
        md,
        "| master open fds, before → after {} hand-overs | {} → {} |",
        soak.handovers, soak.fds_before, soak.fds_after
    );
    let _ = writeln!(
        md,
        "| master RSS, before → after {} hand-overs | {} → {} |",
        soak.handovers,
        mib(soak.rss_kib_before),
        mib(soak.rss_kib_after)
    );
    let half = soak.handovers / 2;
    if let Some(&(at, anon_at_half)) = soak.anon_kib_samples.iter().find(|(n, _)| *n >= half) {
        let _ = writeln!(
            md,
            "| master anonymous memory growth over the last {} hand-overs | {:+.2} MiB |",
            soak.handovers - at,
            (soak.anon_kib_after as f64 - anon_at_half as f64) / 1024.0
        );
    }
    let _ = writeln!(
        md,
        "| hand-over time without load | {} |",
        soak.handover_ms.cell()
    );
    handover_breakdown_row(md, "without load", &r.handover_breakdown_without_load);
    let in_place = &master.upgrades_in_place;
    let _ = writeln!(
        md,
        "| master upgrade in place (exec and adopt), p50 / p99 / max over {} | {} |",
        in_place.count,
        in_place.exec_and_adopt_ms.cell()
    );
    let _ = writeln!(
        md,
        "| … master PID kept, serving worker kept, master fds before → after | {}, {}, {} → {} |",
        yes(in_place.master_pid_kept),
        yes(in_place.worker_kept),
        in_place.fds_before,
        in_place.fds_after
    );
}

fn yes(kept: bool) -> &'static str {
    if kept {
        "yes"
    } else {
        "NO"
    }
}
