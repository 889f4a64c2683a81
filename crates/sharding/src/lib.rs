//! Test sharding, as pure functions: the parts of "split a test suite over N shards so that
//! they finish together" that need neither a network nor a disk nor a clock.
//!
//! - [`junit`]: reading the JUnit XML that real runners write (pytest, cargo nextest, Go's
//!   go-junit-report, Jest's jest-junit) into flat test cases, tolerating what they differ
//!   in: nested suites, a missing `file`, `time` on some cases only, skipped and errored
//!   cases.
//! - [`ids`]: matching those cases back to the ids the suite's `list:` command printed
//!   (`tests/test_x.py::TestA::test_b[1]`, `kiln-coordinator state::tests::apply`, a file
//!   path for file-level splitting), and folding several cases into one id's result.
//! - [`split`]: the three ways to cut a list of tests into shards — by count, statically by
//!   recorded timings (longest-processing-time first), and dynamically: the size of the
//!   next batch a shard pulls from a shared queue, longest tests first, batches shrinking
//!   toward the end so that the last shards to finish finish together.
//! - [`history`]: recorded timings, smoothed over runs and bounded in size.
//!
//! The coordinator's replicated state calls [`split`] and [`history`] while applying
//! commands, so everything here is deterministic: same input, same answer, on every
//! coordinator. The agent calls [`junit`] and [`ids`] on the reports a shard wrote.
//! `kiln-bench shards` runs the same splitters over real and synthetic suites.

pub mod history;
pub mod ids;
pub mod junit;
pub mod split;
