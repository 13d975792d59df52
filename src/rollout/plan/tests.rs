use std::time::{Duration, SystemTime};

use super::*;
use crate::rollout::{failure_name, promote, set_halted, HaltRule, Release, Step};

const MIN: Duration = Duration::from_secs(60);

fn manifest(start: SystemTime) -> Manifest {
    let mut m = Manifest::new(
        Release::new(Some("2.0.0".into()), "c0".repeat(32)),
        start,
        vec![
            Step::new(1.0, Some(10 * MIN)),
            Step::new(10.0, Some(30 * MIN)),
            Step::new(50.0, Some(30 * MIN)),
            Step::new(100.0, None),
        ],
        start + 7 * 24 * 60 * MIN,
    );
    m.halt = HaltRule::new(3, 1.0);
    m
}

fn report(host: usize, outcome: Outcome, at: SystemTime) -> Report {
    let mut r = Report::new(&format!("h{host}"), &"c0".repeat(32), outcome, None);
    r.at = at;
    r
}

#[test]
fn buckets_are_spread_evenly_and_differ_per_release() {
    let a = "aa".repeat(32);
    let b = "bb".repeat(32);
    let hosts = 20_000;
    let first_a: Vec<bool> = (0..hosts)
        .map(|h| covers(10.0, bucket(&format!("host-{h}"), &a)))
        .collect();
    let in_a = first_a.iter().filter(|x| **x).count();
    assert!(
        (1_700..2_300).contains(&in_a),
        "10 % of 20 000 hosts: {in_a}"
    );
    // The first cohort of release b is drawn independently of release a's.
    let both = (0..hosts)
        .filter(|h| first_a[*h] && covers(10.0, bucket(&format!("host-{h}"), &b)))
        .count();
    assert!(
        (100..320).contains(&both),
        "about 1 % in both first cohorts: {both}"
    );
    // Stable, and case-insensitive in the digest.
    assert_eq!(bucket("x", &a), bucket("x", &a.to_uppercase()));
    assert!((0..hosts).all(|h| bucket(&format!("host-{h}"), &a) < BUCKETS));
    assert!(covers(100.0, BUCKETS - 1));
    assert!(!covers(0.5, 50) && covers(0.5, 49));
}

#[test]
fn the_step_in_force_follows_time_and_promotion() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut m = manifest(start);
    assert_eq!(step_at(&m, start - MIN), None);
    assert_eq!(step_at(&m, start), Some((0, Some(start + 10 * MIN))));
    assert_eq!(
        step_at(&m, start + 10 * MIN),
        Some((1, Some(start + 40 * MIN)))
    );
    assert_eq!(
        step_at(&m, start + 69 * MIN),
        Some((2, Some(start + 70 * MIN)))
    );
    assert_eq!(step_at(&m, start + 70 * MIN), Some((3, None)));
    assert!(promote(&mut m, start + MIN));
    assert_eq!(step_at(&m, start + MIN).map(|s| s.0), Some(1));
    assert_eq!(m.serial, 2);
    assert!(promote(&mut m, start + MIN) && promote(&mut m, start + MIN));
    assert!(!promote(&mut m, start + MIN), "no step after the last");
    // Promoting before the start starts now.
    let mut early = manifest(start);
    assert!(promote(&mut early, start - 5 * MIN));
    assert_eq!(step_at(&early, start - 5 * MIN).map(|s| s.0), Some(0));
}

#[test]
fn a_host_installs_only_when_its_step_comes_and_never_after_a_halt_or_the_expiry() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let m = manifest(start);
    let none = Tally::default();
    assert!(matches!(
        decide(&m, 0, &none, start - MIN),
        Verdict::Wait { .. }
    ));
    assert_eq!(decide(&m, 99, &none, start), Verdict::Install { step: 0 });
    let Verdict::Wait { reason } = decide(&m, 100, &none, start) else {
        panic!("bucket 100 is not in the 1 % step");
    };
    assert!(
        reason.contains("step 1 of 4") && reason.contains("in step 2"),
        "{reason}"
    );
    assert_eq!(
        decide(&m, 100, &none, start + 10 * MIN),
        Verdict::Install { step: 1 }
    );
    assert_eq!(
        decide(&m, 9_999, &none, start + 70 * MIN),
        Verdict::Install { step: 3 }
    );
    assert_eq!(decide(&m, 0, &none, m.expires), Verdict::Expired);

    // Two failures of 300 hosts: under both limits. A third halts by count.
    let t = start + MIN;
    let mut reports: Vec<Report> = (0..298).map(|h| report(h, Outcome::Ready, t)).collect();
    reports.push(report(298, Outcome::RolledBack, t));
    reports.push(report(299, Outcome::Refused, t));
    let tally = Tally::of(&m, &reports);
    assert_eq!(
        (tally.ready, tally.rolled_back, tally.refused, tally.hosts()),
        (298, 1, 1, 300)
    );
    assert_eq!(decide(&m, 0, &tally, t), Verdict::Install { step: 0 });
    reports.push(report(300, Outcome::RolledBack, t));
    let halt = decide(&m, 0, &Tally::of(&m, &reports), t);
    assert!(
        matches!(&halt, Verdict::Halted(r) if r.contains("3 hosts")),
        "{halt:?}"
    );

    // By share: 1 failure of 50 hosts is 2 %.
    let mut few: Vec<Report> = (0..49).map(|h| report(h, Outcome::Ready, t)).collect();
    few.push(report(49, Outcome::RolledBack, t));
    let halt = decide(&m, 0, &Tally::of(&m, &few), t);
    assert!(
        matches!(&halt, Verdict::Halted(r) if r.contains("2.0 %")),
        "{halt:?}"
    );

    // Reports about another release do not count.
    let mut other = report(1, Outcome::RolledBack, t);
    other.sha256 = "dd".repeat(32);
    assert_eq!(Tally::of(&m, [&other]).hosts(), 0);

    // A host's count: the reports listed, the failure index read. The same decisions.
    let index: Vec<Report> = (0..2).map(|h| report(h, Outcome::RolledBack, t)).collect();
    let counted = Tally::counted(&m, 300, &index);
    assert_eq!((counted.hosts(), counted.counted_failures), (300, 2));
    assert_eq!(decide(&m, 0, &counted, t), Verdict::Install { step: 0 });
    let index: Vec<Report> = (0..3).map(|h| report(h, Outcome::Refused, t)).collect();
    assert!(matches!(
        decide(&m, 0, &Tally::counted(&m, 300, &index), t),
        Verdict::Halted(_)
    ));
    assert!(matches!(
        decide(&m, 0, &Tally::counted(&m, 50, &index[..1]), t),
        Verdict::Halted(r) if r.contains("2.0 %")
    ));
    // The index holds failures only, of this release; a listing that lags still counts them.
    assert_eq!(Tally::counted(&m, 0, &index).hosts(), 3);
    let ready = report(7, Outcome::Ready, t);
    assert_eq!(Tally::counted(&m, 10, [&ready, &other]).counted_failures, 0);
    // A host that failed twice counts once.
    let twice = [
        report(1, Outcome::Refused, t),
        report(1, Outcome::RolledBack, t + MIN),
    ];
    let counted = Tally::counted(&m, 10, &twice);
    assert_eq!((counted.counted_failures, counted.rolled_back), (1, 1));
}

#[test]
fn a_failure_is_indexed_by_a_name_that_says_it_all() {
    use crate::rollout::report::parse_failure_name;
    let sha = "c0".repeat(32);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_123);
    let mut failed = report(0, Outcome::RolledBack, at);
    failed.host = "web-1.eu.example".into();
    failed.reason = Some("crashed".into());
    let name = failure_name(&failed);
    assert_eq!(
        name,
        format!("failures/{sha}/web-1.eu.example.1800000123.rolled-back.json")
    );
    let parsed = parse_failure_name(&sha, &name).unwrap();
    assert_eq!(
        (parsed.host.as_str(), parsed.at, parsed.outcome),
        ("web-1.eu.example", at, Outcome::RolledBack)
    );
    assert_eq!(
        parsed.reason, None,
        "the reason is in the document, not the name"
    );
    for bad in [
        format!("failures/{sha}/web-1.json"),
        format!("failures/{sha}/web-1.x.rolled-back.json"),
        format!("failures/{sha}/web-1.1.ready.json"),
        format!("failures/{sha}/.1.refused.json"),
        format!("failures/{sha}/a/b.1.refused.json"),
        format!("reports/{sha}/web-1.1.refused.json"),
    ] {
        assert!(parse_failure_name(&sha, &bad).is_none(), "{bad}");
    }
}

#[test]
fn the_publisher_halts_and_resumes_and_a_resume_forgets_earlier_failures() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut m = manifest(start);
    let t = start + MIN;
    let failed: Vec<Report> = (0..3).map(|h| report(h, Outcome::RolledBack, t)).collect();
    assert!(matches!(
        decide(&m, 0, &Tally::of(&m, &failed), t),
        Verdict::Halted(_)
    ));
    set_halted(&mut m, Some("bad metrics".into()), t);
    let halt = decide(&m, 0, &Tally::default(), t);
    assert!(
        matches!(&halt, Verdict::Halted(r) if r.contains("bad metrics")),
        "{halt:?}"
    );
    set_halted(&mut m, None, t + MIN);
    assert_eq!(m.serial, 3);
    assert_eq!(
        decide(&m, 0, &Tally::of(&m, &failed), t + MIN),
        Verdict::Install { step: 0 }
    );
    let late: Vec<Report> = (0..3)
        .map(|h| report(h, Outcome::RolledBack, t + 2 * MIN))
        .collect();
    assert!(matches!(
        decide(&m, 0, &Tally::of(&m, &late), t + 2 * MIN),
        Verdict::Halted(_)
    ));
}

#[test]
fn malformed_manifests_are_refused_with_the_field_at_fault() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let good = manifest(start);
    assert_eq!(Manifest::parse(&good.to_json()).unwrap(), good);
    type Break = fn(&mut Manifest);
    let cases: [(&str, Break); 6] = [
        ("release.sha256", |m| m.release.sha256 = "nothex".into()),
        ("release.version", |m| {
            m.release.version = Some("two".into())
        }),
        ("at least one step", |m| m.steps.clear()),
        ("lower than the step before", |m| m.steps[1].percent = 0.5),
        ("needs a duration", |m| m.steps[0].lasts = None),
        ("expires must be after start", |m| m.expires = m.start),
    ];
    for (expected, break_it) in cases {
        let mut bad = good.clone();
        break_it(&mut bad);
        let error = Manifest::parse(&bad.to_json()).unwrap_err();
        assert!(error.contains(expected), "{expected}: {error}");
    }
    let error = Manifest::parse(b"{\"release\": 1}").unwrap_err();
    assert!(error.contains("not a rollout manifest"), "{error}");
}

#[test]
fn a_manifest_verifies_only_with_its_own_signature_by_a_configured_key() {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let keys = vec![pair.pk.to_base64()];
    let bytes = manifest(SystemTime::now()).to_json();
    let signature = crate::rollout::sign(&bytes, &pair.sk).unwrap();
    assert_eq!(
        crate::rollout::verify(&bytes, Some(signature.as_bytes()), &keys),
        Ok(())
    );
    let missing = crate::rollout::verify(&bytes, None, &keys).unwrap_err();
    assert!(missing.contains("missing"), "{missing}");
    let mut changed = bytes.clone();
    changed[10] ^= 1;
    let bad = crate::rollout::verify(&changed, Some(signature.as_bytes()), &keys).unwrap_err();
    assert!(bad.contains("bad signature"), "{bad}");
    let foreign = crate::rollout::sign(&bytes, &other.sk).unwrap();
    assert!(crate::rollout::verify(&bytes, Some(foreign.as_bytes()), &keys).is_err());
    assert_eq!(
        crate::rollout::verify(&bytes, None, &[]),
        Ok(()),
        "no keys: trusted unsigned"
    );
}
