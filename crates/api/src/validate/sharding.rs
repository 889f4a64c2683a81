//! Checks for a stage's `shards:` and `tests:`.
//!
//! A `tests:` stage runs its suite through the agent's test loop on the process driver, so
//! it takes no `command:` (its `tests.run` is the command) and no `image:` or `build:`.
//! `shards: { max, target }` picks a count from recorded timings, which only a `tests:`
//! stage records.

use super::Checker;
use crate::spec::{Shards, ShardsFile, Split, StageFile, Tests, limits};
use crate::units;

impl Checker<'_> {
    /// `Some(None)` for an unsharded stage; `None` when an error was recorded.
    pub(super) fn check_shards(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Option<Shards>> {
        let field = format!("{path}.shards");
        let count = |n: i64| (1..=limits::MAX_SHARDS).contains(&n).then_some(n as u32);
        let range = |n: i64| format!("{n} is out of range (1 to {})", limits::MAX_SHARDS);
        match &s.shards {
            None => Some(None),
            Some(ShardsFile::Count(n)) => match count(*n) {
                Some(n) => Some(Some(Shards::Fixed(n))),
                None => {
                    self.push(line("shards"), &field, range(*n));
                    None
                }
            },
            Some(ShardsFile::Auto(auto)) => {
                let before = self.errors.len();
                let max = count(auto.max);
                if max.is_none() {
                    self.push(line("max"), &format!("{field}.max"), range(auto.max));
                }
                let target_ms = self.quantity(
                    Some(&auto.target),
                    line("target"),
                    &format!("{field}.target"),
                    units::parse_duration_ms,
                    1,
                    limits::MAX_TIMEOUT_MS,
                    "hours",
                    3_600_000,
                );
                if s.tests.is_none() {
                    let reason = "target picks the count from recorded test timings, which only a stage with tests: records; write shards: N".into();
                    self.push(line("target"), &format!("{field}.target"), reason);
                }
                (self.errors.len() == before).then(|| {
                    Some(Shards::Auto {
                        max: max.unwrap_or(1),
                        target_ms,
                    })
                })
            }
        }
    }

    /// `Some(None)` for a stage without tests; `None` when an error was recorded.
    pub(super) fn check_tests(
        &mut self,
        s: &StageFile,
        path: &str,
        line: &dyn Fn(&str) -> Option<usize>,
    ) -> Option<Option<Tests>> {
        let Some(t) = &s.tests else {
            return Some(None);
        };
        let before = self.errors.len();
        let field = format!("{path}.tests");
        if s.command.is_some() {
            let reason = "a stage with tests: runs tests.run; leave command: out".into();
            self.push(line("command"), &format!("{path}.command"), reason);
        }
        if s.image.is_some() || s.build.is_some() {
            let reason = "tests: run on the process driver; run a suite in a container from a command stage instead".into();
            self.push(line("tests"), &field, reason);
        }
        for (key, value) in [("list", &t.list), ("run", &t.run), ("report", &t.report)] {
            if value.trim().is_empty() {
                self.push(
                    line(key),
                    &format!("{field}.{key}"),
                    "must not be empty".into(),
                );
            }
        }
        if t.report.starts_with('/') || t.report.split('/').any(|p| p == "..") {
            let reason = format!(
                "{:?} must be a glob relative to the task's work directory, inside it",
                t.report
            );
            self.push(line("report"), &format!("{field}.report"), reason);
        }
        let split = match t.split.as_deref() {
            None => Split::Dynamic,
            Some(text) => Split::parse(text).unwrap_or_else(|| {
                let reason = format!("{text:?} is not one of dynamic, static, count");
                self.push(line("split"), &format!("{field}.split"), reason);
                Split::Dynamic
            }),
        };
        (self.errors.len() == before).then(|| {
            Some(Tests {
                list: t.list.clone(),
                run: t.run.clone(),
                report: t.report.clone(),
                split,
            })
        })
    }
}
