//! Cutting a suite into shards. Three ways, from worst to best at finishing together:
//!
//! - [`by_count`]: equal numbers of tests, in list order. Needs nothing; ignores that one
//!   test can take a thousand times another.
//! - [`by_time`]: the longest-processing-time-first greedy (Graham's LPT) over recorded
//!   timings: sort longest first, give each test to the shard with the least work so far.
//!   Within 4/3 of optimal on the estimates, but the estimates are last runs' times, and
//!   run-to-run noise moves the real finish times away from the plan.
//! - Dynamic: no plan. Tests wait in one queue, longest first ([`longest_first`]); each
//!   shard pulls a batch when it is free. [`Batching::next_len`] sizes the batch as guided
//!   self-scheduling does: a share of the estimated work left, `1 / (2 × shards)`, so early
//!   batches are big (few round trips) and late ones shrink to single tests, which is what
//!   lets every shard end within about one short test of the others whatever the noise.
//!
//! All of it is deterministic (ties go to the lower index): the coordinator runs it while
//! applying replicated commands.

/// Equal counts in list order: shard `i` gets a contiguous run of indices, the first
/// `n % shards` shards one more than the rest.
pub fn by_count(n: usize, shards: usize) -> Vec<Vec<usize>> {
    let shards = shards.max(1);
    let (base, extra) = (n / shards, n % shards);
    let mut out = Vec::with_capacity(shards);
    let mut next = 0;
    for i in 0..shards {
        let len = base + usize::from(i < extra);
        out.push((next..next + len).collect());
        next += len;
    }
    out
}

/// Longest-processing-time first over `estimates`: returns each shard's indices, each in the
/// order the shard should run them (longest first).
pub fn by_time(estimates: &[u64], shards: usize) -> Vec<Vec<usize>> {
    let shards = shards.max(1);
    let mut load = vec![0u64; shards];
    let mut out = vec![Vec::new(); shards];
    for i in longest_first(estimates) {
        let (least, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(s, &l)| (l, s))
            .expect("at least one shard");
        load[least] += estimates[i];
        out[least].push(i);
    }
    out
}

/// Indices ordered by estimate, longest first; equal estimates keep list order.
pub fn longest_first(estimates: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..estimates.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(estimates[i]), i));
    order
}

/// A batch is made at least this many times the per-batch overhead: at 8, the overhead
/// costs at most about 1/9 of a batch.
pub const OVERHEAD_FACTOR: u64 = 8;

/// How a dynamic queue sizes its batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub shards: usize,
    /// What each batch costs besides its tests (the runner's start-up, the round trips),
    /// as measured so far; 0 before any batch was measured.
    pub overhead_ms: u64,
    /// The whole suite's estimated time, when it was listed.
    pub suite_ms: u64,
}

impl Batching {
    /// How many tests, from the front of a longest-first queue whose estimates are
    /// `remaining`, the next batch should take: enough to reach `1 / (2 × shards)` of the
    /// work left, and at least one. With a per-batch overhead, a batch is also at least
    /// [`OVERHEAD_FACTOR`] times it, but never more than an even share of the whole suite:
    /// with slow-starting runners batches stay few, and a short suite degrades to one batch
    /// per shard (a static split by estimates) rather than to idle shards.
    pub fn next_len(&self, remaining: &[u64]) -> usize {
        if remaining.is_empty() {
            return 0;
        }
        let shards = self.shards.max(1) as u128;
        let total: u128 = remaining.iter().map(|&t| u128::from(t)).sum();
        let floor = u128::from(self.overhead_ms.saturating_mul(OVERHEAD_FACTOR))
            .min(u128::from(self.suite_ms).div_ceil(shards));
        let target = total.div_ceil(2 * shards).max(floor);
        let mut sum = 0u128;
        for (i, &t) in remaining.iter().enumerate() {
            sum += u128::from(t);
            if sum >= target {
                return i + 1;
            }
        }
        remaining.len()
    }
}

/// The time a shard plan takes if every test takes what `actual` says: the largest sum.
pub fn makespan(plan: &[Vec<usize>], actual: &[u64]) -> u64 {
    plan.iter()
        .map(|s| s.iter().map(|&i| actual[i]).sum::<u64>())
        .max()
        .unwrap_or(0)
}

/// No split can finish sooner than this: the mean load, or the longest single test.
pub fn lower_bound(actual: &[u64], shards: usize) -> u64 {
    let total: u64 = actual.iter().sum();
    let longest = actual.iter().copied().max().unwrap_or(0);
    total.div_ceil(shards.max(1) as u64).max(longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn count_split_is_contiguous_and_even() {
        assert_eq!(by_count(7, 3), vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
        assert_eq!(by_count(2, 4), vec![vec![0], vec![1], vec![], vec![]]);
    }

    #[test]
    fn lpt_balances_what_count_cannot() {
        // One long test and many short ones: count puts the long one beside its neighbours.
        let t = [90, 10, 10, 10, 10, 10, 10, 10, 10, 10];
        let lpt = by_time(&t, 2);
        assert_eq!(makespan(&lpt, &t), 90);
        assert_eq!(makespan(&by_count(t.len(), 2), &t), 130);
        assert_eq!(lpt[0], vec![0], "the longest test alone");
    }

    fn batching(shards: usize, overhead_ms: u64, suite_ms: u64) -> Batching {
        Batching {
            shards,
            overhead_ms,
            suite_ms,
        }
    }

    #[test]
    fn batches_shrink_toward_the_end() {
        let t = vec![10u64; 100];
        let b = batching(4, 0, 1000);
        assert_eq!(b.next_len(&t), 13, "1000 ms left over 8 = 125 ms");
        assert_eq!(b.next_len(&t[..4]), 1);
        assert_eq!(b.next_len(&[]), 0);
        assert_eq!(b.next_len(&[500, 1, 1]), 1, "a long head goes alone");
    }

    #[test]
    fn overhead_makes_batches_bigger_up_to_an_even_share() {
        let t = vec![10u64; 100];
        assert_eq!(batching(4, 20, 1000).next_len(&t), 16, "8 x 20 ms");
        assert_eq!(
            batching(4, 100, 1000).next_len(&t),
            25,
            "capped at 1000 / 4"
        );
        // Late in the suite the floor still holds: no geometric tail of tiny batches.
        assert_eq!(batching(4, 100, 1000).next_len(&t[..40]), 25);
    }

    #[test]
    fn longest_first_is_stable() {
        assert_eq!(longest_first(&[1, 5, 5, 2]), vec![1, 2, 3, 0]);
    }

    proptest! {
        #[test]
        fn every_split_is_a_partition(t in prop::collection::vec(0u64..10_000, 0..300), n in 1usize..17) {
            for plan in [by_count(t.len(), n), by_time(&t, n)] {
                prop_assert_eq!(plan.len(), n);
                let mut all: Vec<usize> = plan.concat();
                all.sort();
                prop_assert_eq!(all, (0..t.len()).collect::<Vec<_>>());
            }
        }

        #[test]
        /// Graham's bound for greedy list scheduling: no shard ends later than the mean load
        /// plus one test. (LPT's 4/3 is against the optimum, which can exceed the lower
        /// bound, so it is not a property of the bound.)
        fn lpt_is_within_one_test_of_the_mean(t in prop::collection::vec(1u64..10_000, 1..300), n in 1usize..17) {
            let span = makespan(&by_time(&t, n), &t);
            let total: u64 = t.iter().sum();
            let longest = t.iter().copied().max().unwrap_or(0);
            prop_assert!(span * n as u64 <= total + (n as u64 - 1) * longest, "{span}");
        }

        #[test]
        fn batches_drain_any_queue(t in prop::collection::vec(0u64..10_000, 1..300), n in 1usize..17, o in 0u64..5_000) {
            let b = batching(n, o, t.iter().sum());
            let mut rest = &t[..];
            let mut batches = 0;
            while !rest.is_empty() {
                let k = b.next_len(rest);
                prop_assert!(k >= 1 && k <= rest.len());
                rest = &rest[k..];
                batches += 1;
            }
            prop_assert!(batches <= t.len());
        }
    }
}
