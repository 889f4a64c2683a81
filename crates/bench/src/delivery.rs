//! `kiln-bench delivery`: a real cluster (1 coordinator, 2 agents, release binaries), a real
//! `kiln gateway` process, environments `staging` and `production` (no approval), and a
//! container service `web` of two busybox httpd replicas whose `POST /cgi-bin/predict`
//! answers its version. Everything is driven with the real `kiln` CLI, as a user would.
//!
//! Each round, under steady load (4 clients through the gateway on
//! `/production/web/cgi-bin/predict`), three calls are timed, each from the moment the CLI is
//! started to the first answer after which every answer comes from the wanted version:
//!
//! - **Promote**: a new version goes to staging and settles there (not timed), then
//!   `kiln promote web --from staging --to production`.
//! - **Deploy**: another new version straight into production, `kiln deploy FILE --env
//!   production`.
//! - **Rollback**: `kiln rollback web --env production --reason bench`, back to the last
//!   known good revision (the one promoted in this round).
//!
//! Every request whose status is not 200 in a measurement's window (from 300 ms before the
//! call to 300 ms after the service settled) counts as failed. The first promotion, of v1,
//! is warm-up and not timed. Targets (the issue's): rollback under 2 s with no failed
//! request, promote under 5 s; the verdict holds the worst round against them.
//!
//! It needs a Docker daemon; without one it says so and measures nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_e2e::docker::docker_answers;
use kiln_e2e::http::{Answer, Load};
use kiln_e2e::services::{busybox_service, version, wait_settled};
use kiln_e2e::{Cluster, Options};
use serde_json::Value;

pub struct Params {
    pub rounds: usize,
}

/// Production's route through the gateway.
const PATH: &str = "/production/web/cgi-bin/predict";
const CLIENTS: usize = 4;
/// Load before each call and after the settle, so that a window holds both sides.
const MARGIN: Duration = Duration::from_millis(300);
const ROLLBACK_TARGET_S: f64 = 2.0;
const PROMOTE_TARGET_S: f64 = 5.0;

/// One timed call.
struct Sample {
    /// The version production moved to.
    version: String,
    /// Call → the first answer after which every answer is from `version`; `None` when the
    /// window ended on an answer from another (or a failure).
    secs: Option<f64>,
    failed: usize,
    total: usize,
}

pub fn run(_rt: &tokio::runtime::Runtime, params: Params) {
    if !docker_answers() {
        println!(
            "kiln-bench delivery: no Docker daemon answers `docker version`; this bench runs container services and needs one: nothing measured"
        );
        return;
    }
    println!(
        "kiln-bench delivery: 1 coordinator, 2 agents, kiln gateway, release binaries, busybox httpd containers"
    );
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 2,
        agent_cpu: "8".into(),
        heartbeat_ms: 200,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    ok(&cluster, &["env", "create", "staging"]);
    ok(&cluster, &["env", "create", "production"]);

    // Warm-up, not timed: v1 into staging, then promoted into production.
    let file = spec_file(&cluster, "v1");
    let reply = cluster.kiln_json(&["deploy", &file, "--env", "staging"]);
    let rev = revision(&reply, "deploy v1 to staging");
    wait_settled(&mut cluster, "web", Some("staging"), rev, "v1 in staging");
    let promote_v1 = ["promote", "web", "--from", "staging", "--to", "production"];
    let rev = revision(&cluster.kiln_json(&promote_v1), "promote v1 to production");
    wait_settled(
        &mut cluster,
        "web",
        Some("production"),
        rev,
        "v1 in production",
    );
    // Production's revisions and the version each answers with.
    let mut production: HashMap<u64, String> = HashMap::from([(rev, "v1".to_string())]);

    let (mut promotes, mut deploys, mut rollbacks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=params.rounds {
        // The next version through staging (not timed), then promoted under load.
        let promoted = format!("v{}", round + 1);
        let file = spec_file(&cluster, &promoted);
        let reply = cluster.kiln_json(&["deploy", &file, "--env", "staging"]);
        let rev = revision(&reply, &format!("deploy {promoted} to staging"));
        let what = format!("{promoted} in staging");
        wait_settled(&mut cluster, "web", Some("staging"), rev, &what);
        let (rev, sample) = measure(&mut cluster, &gateway, "promote", |c| {
            let args = ["promote", "web", "--from", "staging", "--to", "production"];
            let rev = revision(&c.kiln_json(&args), &format!("promote {promoted}"));
            (rev, promoted.clone())
        });
        production.insert(rev, sample.version.clone());
        promotes.push(sample);

        // Another new version straight into production.
        let direct = format!("v{}-direct", round + 1);
        let file = spec_file(&cluster, &direct);
        let (rev, sample) = measure(&mut cluster, &gateway, "deploy", |c| {
            let reply = c.kiln_json(&["deploy", &file, "--env", "production"]);
            (
                revision(&reply, &format!("deploy {direct}")),
                direct.clone(),
            )
        });
        production.insert(rev, sample.version.clone());
        deploys.push(sample);

        // Back to the last known good revision.
        let (_, sample) = measure(&mut cluster, &gateway, "rollback", |c| {
            let args = [
                "rollback",
                "web",
                "--env",
                "production",
                "--reason",
                "bench",
            ];
            let rev = revision(&c.kiln_json(&args), "rollback");
            let to = production.get(&rev).cloned().unwrap_or_else(|| {
                panic!("rollback went to revision {rev}, which this bench did not make")
            });
            (rev, to)
        });
        rollbacks.push(sample);

        let show = |s: &Sample| s.secs.map_or("-".into(), |t| format!("{t:.2} s"));
        eprintln!(
            "  round {round}: promote {}, deploy {}, rollback {}",
            show(&promotes[round - 1]),
            show(&deploys[round - 1]),
            show(&rollbacks[round - 1])
        );
    }

    println!(
        "\nunder load ({CLIENTS} clients through the gateway on {PATH}, 2 replicas): call → every answer from the new version"
    );
    let promote = report(
        "promote (kiln promote web --from staging --to production)",
        &promotes,
    );
    report("deploy (kiln deploy FILE --env production)", &deploys);
    let rollback = report("rollback (kiln rollback web --env production)", &rollbacks);

    println!("\nverdict (worst round against the targets):");
    let (worst, failed) = rollback;
    let met = worst.is_some_and(|t| t < ROLLBACK_TARGET_S) && failed == 0;
    println!(
        "  rollback: max {}, {failed} failed requests (target < {ROLLBACK_TARGET_S:.0} s, 0 failed): {}",
        seconds(worst),
        if met { "met" } else { "MISSED" }
    );
    let (worst, _) = promote;
    let met = worst.is_some_and(|t| t < PROMOTE_TARGET_S);
    println!(
        "  promote:  max {} (target < {PROMOTE_TARGET_S:.0} s): {}",
        seconds(worst),
        if met { "met" } else { "MISSED" }
    );
    drop(cluster);
}

/// Runs `kiln ARGS`, panicking with its stderr when it fails.
fn ok(cluster: &Cluster, args: &[&str]) {
    let out = cluster.kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The service file of `web` answering `version`, written into the cluster's temp dir.
fn spec_file(cluster: &Cluster, version: &str) -> String {
    cluster.write(
        &format!("web-{version}.yaml"),
        &busybox_service("web", version),
    )
}

/// The revision a deploy, promotion (`DeployResponse`) or rollback (`ServiceView`) names.
fn revision(reply: &Value, what: &str) -> u64 {
    reply["revision"]
        .as_u64()
        .filter(|&r| r > 0)
        .unwrap_or_else(|| panic!("{what}: no revision in the answer: {reply}"))
}

/// Starts the load, makes `call` (which returns the revision production moves to and the
/// version it answers with), waits for production to settle on it, and times the switch
/// from the answers.
fn measure(
    cluster: &mut Cluster,
    gateway: &str,
    what: &str,
    call: impl FnOnce(&Cluster) -> (u64, String),
) -> (u64, Sample) {
    let load = Load::start(gateway, PATH, "{}", CLIENTS);
    std::thread::sleep(MARGIN);
    let called = Instant::now();
    let (rev, want) = call(&*cluster);
    let settled = format!("{what}: {want} (revision {rev}) in production");
    wait_settled(cluster, "web", Some("production"), rev, &settled);
    std::thread::sleep(MARGIN);
    let answers = load.stop();
    let sample = Sample {
        secs: switched(&answers, &want, called),
        failed: answers.iter().filter(|a| a.status != 200).count(),
        total: answers.len(),
        version: want,
    };
    (rev, sample)
}

/// Seconds from `called` to the first answer after which every answer is from `want`.
fn switched(answers: &[Answer], want: &str, called: Instant) -> Option<f64> {
    if answers.is_empty() {
        return None;
    }
    let at = match answers.iter().rposition(|a| version(a) != want) {
        Some(i) => answers.get(i + 1)?.at,
        None => called,
    };
    Some(at.saturating_duration_since(called).as_secs_f64())
}

fn seconds(t: Option<f64>) -> String {
    t.map_or("- (did not settle on one version)".into(), |t| {
        format!("{t:.2} s")
    })
}

/// Prints one kind's rounds and min/median/max; returns its worst time (`None` if a round
/// never settled on its version) and its failed requests.
fn report(title: &str, samples: &[Sample]) -> (Option<f64>, usize) {
    println!("\n{title}");
    for (i, s) in samples.iter().enumerate() {
        let to = format!("→ {}", s.version);
        let secs = s.secs.map_or("-".into(), |t| format!("{t:.2} s"));
        println!(
            "  round {:<3} {to:<14} {secs:>10}   {} of {} requests failed",
            i + 1,
            s.failed,
            s.total
        );
    }
    let failed: usize = samples.iter().map(|s| s.failed).sum();
    let total: usize = samples.iter().map(|s| s.total).sum();
    let mut times: Vec<f64> = samples.iter().filter_map(|s| s.secs).collect();
    times.sort_by(f64::total_cmp);
    if times.is_empty() {
        println!("  no round settled; {failed} of {total} requests failed");
        return (None, failed);
    }
    println!(
        "  min {:.2} s   median {:.2} s   max {:.2} s;   {failed} of {total} requests failed",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let all_settled = times.len() == samples.len();
    (all_settled.then(|| times[times.len() - 1]), failed)
}
