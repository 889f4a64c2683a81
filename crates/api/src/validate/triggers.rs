//! Checks for a pipeline's git trigger fields: `on:` (globs over branch names, tag names and
//! changed paths, compiled by the rules [`crate::git::filter`] matches with) and
//! `concurrency:` (a group, and the `${{ git.* }}` expressions it may use).
//!
//! Both are top-level keys: their lines are found from the line that starts with the key,
//! not from a stage's `name:`.

use super::{Checker, find_key_line};
use crate::git;
use crate::spec::{Concurrency, ConcurrencyFile, Triggers, TriggersFile};

impl Checker<'_> {
    /// `on:` as kept. A glob that does not compile, and `paths` with `paths_ignore`, are
    /// errors.
    pub(super) fn check_triggers(&mut self, on: Option<&TriggersFile>) -> Option<Triggers> {
        let on = on?;
        let lines = self.lines.clone();
        let at = top_key_line(&lines, "on");
        let line = |key: &str| at.and_then(|l| find_key_line(&lines, l - 1, key)).or(at);
        let lists = [
            ("branches", &on.branches),
            ("tags", &on.tags),
            ("paths", &on.paths),
            ("paths_ignore", &on.paths_ignore),
        ];
        for (key, globs) in lists {
            for (i, glob) in globs.iter().flatten().enumerate() {
                if let Err(reason) = check_trigger_glob(key, glob) {
                    self.push(line(key), &format!("on.{key}[{i}]"), reason);
                }
            }
        }
        if on.paths.is_some() && on.paths_ignore.is_some() {
            let reason = "paths and paths_ignore cannot both be set".to_string();
            self.push(line("paths_ignore"), "on.paths_ignore", reason);
        }
        Some(Triggers {
            branches: on.branches.clone(),
            tags: on.tags.clone(),
            paths: on.paths.clone().unwrap_or_default(),
            paths_ignore: on.paths_ignore.clone().unwrap_or_default(),
        })
    }

    /// `concurrency:` as kept. Its group must not be empty, and may use only the
    /// `${{ git.* }}` expressions that [`git::expand_group`] fills in.
    pub(super) fn check_concurrency(
        &mut self,
        concurrency: Option<&ConcurrencyFile>,
    ) -> Option<Concurrency> {
        let c = concurrency?;
        let lines = self.lines.clone();
        let at = top_key_line(&lines, "concurrency");
        let group = at.and_then(|l| find_key_line(&lines, l - 1, "group"));
        if let Err(reason) = git::check_group(&c.group) {
            self.push(group.or(at), "concurrency.group", reason);
        }
        Some(Concurrency {
            group: c.group.clone(),
            cancel_in_progress: c.cancel_in_progress.unwrap_or(false),
        })
    }
}

/// One glob of `on.KEY`: it compiles, and it is written the way pushes are matched (the
/// short name of a branch or a tag; a path from the repository's root).
fn check_trigger_glob(key: &str, glob: &str) -> Result<(), String> {
    if let Err(reason) = git::check_glob(glob) {
        return Err(format!("{glob:?}: {reason}"));
    }
    let is_path = key.starts_with("paths");
    if is_path && glob.starts_with('/') {
        return Err(format!("{glob:?}: paths are relative to the repository"));
    }
    if !is_path && glob.starts_with("refs/") {
        return Err(format!("{glob:?}: on.{key} holds names, not refs"));
    }
    Ok(())
}

/// The 1-based line of the top-level `key:` (at the start of its line).
fn top_key_line(lines: &[&str], key: &str) -> Option<usize> {
    let prefix = format!("{key}:");
    lines
        .iter()
        .position(|l| l.starts_with(&prefix))
        .map(|i| i + 1)
}
