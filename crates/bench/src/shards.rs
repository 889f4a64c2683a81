//! `kiln-bench shards`: how close each way of splitting a suite comes to finishing all its
//! shards together, as makespan over the lower bound `max(Σt / N, longest test)`.
//!
//! The suites are real JUnit reports (their `time`s are what the split is planned from,
//! as kiln's history would hold them) and a heavy-tailed synthetic suite. Each trial then
//! draws the times the tests "really" take this run: the recorded time × a uniform factor
//! in [0.7, 1.3], independently per test, which is the run-to-run noise a plan made from
//! history has to survive. The three splits are kiln's own code from `kiln-sharding`:
//!
//! - count: `split::by_count`, each shard runs its part;
//! - static: `split::by_time` (LPT) over the recorded times;
//! - dynamic: a replay of the test queue with the real batch policy — the first shard to
//!   be free takes `split::Batching::next_len` tests from the longest-first queue, sized from
//!   the recorded estimates (knowing the per-batch overhead, as kiln learns it from the
//!   first batches), and is busy for their real times plus that overhead (the runner's
//!   start-up, the two RPCs).
//!
//! This measures the splitting, not the cluster: the e2e tests show the queue working over
//! real processes; here only arithmetic runs, so thousands of trials take a second.

use kiln_sharding::{junit, split};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The real suites, from `crates/sharding/tests/fixtures`: kiln's own `cargo nextest`
/// run and two open-source projects' pytest runs, all on this kind of machine.
pub const DEFAULT_REPORTS: &[&str] = &[
    "nextest-kiln.xml",
    "pytest-packaging.xml",
    "pytest-more-itertools.xml",
];

pub struct Params {
    /// JUnit XML files, each one suite.
    pub reports: Vec<String>,
    pub trials: usize,
    /// Added to every batch's time: each shard's one batch for count and static, each
    /// pulled batch for dynamic.
    pub overheads_ms: Vec<u64>,
    pub seed: u64,
}

struct Suite {
    name: String,
    /// Recorded times, ms.
    times: Vec<u64>,
}

pub fn run(params: Params) {
    let mut suites = Vec::new();
    for path in &params.reports {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let cases = junit::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let name = std::path::Path::new(path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        suites.push(Suite {
            name,
            times: cases.iter().map(|c| c.time_ms.unwrap_or(0)).collect(),
        });
    }
    suites.push(synthetic(params.seed));

    println!(
        "kiln-bench shards: makespan / max(Σt/N, longest), {} trials, ±30 % uniform noise per test per trial (seed {})",
        params.trials, params.seed
    );
    for s in &suites {
        let total: u64 = s.times.iter().sum();
        let longest = s.times.iter().copied().max().unwrap_or(0);
        println!(
            "\n{}: {} tests, Σt {:.1} s, longest {:.2} s",
            s.name,
            s.times.len(),
            total as f64 / 1000.0,
            longest as f64 / 1000.0
        );
        for &overhead in &params.overheads_ms {
            println!(
                "  per-batch overhead {overhead} ms     mean (worst) of {} trials; dynamic batches per shard",
                params.trials
            );
            println!(
                "  {:>3}  {:>15}  {:>15}  {:>15}  {:>8}",
                "N", "count", "static (LPT)", "dynamic", "batches"
            );
            for n in [2usize, 4, 8, 16] {
                let mut rng = StdRng::seed_from_u64(params.seed ^ (n as u64) << 32 ^ overhead);
                let mut ratios = [Vec::new(), Vec::new(), Vec::new()];
                let mut batches = 0usize;
                for _ in 0..params.trials {
                    let actual: Vec<u64> = s
                        .times
                        .iter()
                        .map(|&t| (t as f64 * rng.random_range(0.7..=1.3)).round() as u64)
                        .collect();
                    let bound = split::lower_bound(&actual, n).max(1) as f64;
                    let count = split::makespan(&split::by_count(s.times.len(), n), &actual);
                    let estimates: Vec<u64> = s.times.iter().map(|&t| t.max(1)).collect();
                    let lpt = split::makespan(&split::by_time(&estimates, n), &actual);
                    let (dynamic, b) = dynamic(&estimates, &actual, n, overhead);
                    batches += b;
                    ratios[0].push((count + overhead) as f64 / bound);
                    ratios[1].push((lpt + overhead) as f64 / bound);
                    ratios[2].push(dynamic as f64 / bound);
                }
                let show = |r: &[f64]| {
                    let mean = r.iter().sum::<f64>() / r.len() as f64;
                    let worst = r.iter().copied().fold(0.0, f64::max);
                    format!("{mean:.3} ({worst:.3})")
                };
                println!(
                    "  {n:>3}  {:>15}  {:>15}  {:>15}  {:>8.1}",
                    show(&ratios[0]),
                    show(&ratios[1]),
                    show(&ratios[2]),
                    batches as f64 / (params.trials * n) as f64
                );
            }
        }
    }
}

/// Replays the dynamic queue: returns the makespan and the number of batches taken.
fn dynamic(estimates: &[u64], actual: &[u64], shards: usize, overhead: u64) -> (u64, usize) {
    let order = split::longest_first(estimates);
    let queue_estimates: Vec<u64> = order.iter().map(|&i| estimates[i]).collect();
    let batching = split::Batching {
        shards,
        overhead_ms: overhead,
        suite_ms: estimates.iter().sum(),
    };
    let mut free_at = vec![0u64; shards];
    let (mut next, mut batches) = (0usize, 0usize);
    while next < order.len() {
        let (shard, _) = free_at
            .iter()
            .enumerate()
            .min_by_key(|&(k, &t)| (t, k))
            .expect("a shard");
        let len = batching.next_len(&queue_estimates[next..]);
        let work: u64 = order[next..next + len].iter().map(|&i| actual[i]).sum();
        free_at[shard] += overhead + work;
        next += len;
        batches += 1;
    }
    (free_at.into_iter().max().unwrap_or(0), batches)
}

/// 2,000 tests with Pareto-distributed times (shape 1.2, minimum 20 ms, capped at 120 s):
/// most tests are quick, a few take minutes, as in suites with integration tests.
fn synthetic(seed: u64) -> Suite {
    let mut rng = StdRng::seed_from_u64(seed);
    let times = (0..2000)
        .map(|_| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            (20.0 / u.powf(1.0 / 1.2)).min(120_000.0).round() as u64
        })
        .collect();
    Suite {
        name: "synthetic heavy-tailed (Pareto 1.2)".into(),
        times,
    }
}
