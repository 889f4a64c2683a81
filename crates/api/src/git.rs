//! Git triggers, as pure functions: which pushes start a run ([`filter`], after GitHub
//! Actions' `on.push`), which head commits ask not to ([`skip_requested`]), which
//! environment a branch deploys to ([`environment_for`]), and which concurrency group a run
//! is in ([`expand_group`]).
//!
//! This module does no I/O: no git, no network, no clock. Whoever saw the push (a webhook or
//! a poll) reads the ref, the head commit's message and the changed paths, and passes them
//! in. Validation checks `on:` globs with the same [`check_glob`], and the CLI its
//! `--branch GLOB=ENV` maps, so that a glob means the same thing everywhere.
//!
//! Globs ([`glob_matches`]): `*` and `?` stay within one path segment (`feature/*` matches
//! `feature/x`, not `feature/x/y`), `**` crosses segments (`release/**`), and `[a-z]` and
//! `{a,b}` are as usual. This is unlike [`crate::spec::glob_match`] (GPU model names), whose
//! `*` matches anything.
//!
//! A push that starts nothing is a normal outcome, not an error: the functions here say why
//! in a short sentence, for whoever asks why no run appeared.

use globset::{GlobBuilder, GlobMatcher};

use crate::spec::Triggers;

/// The commit id git reports for "no commit": the `before` of a new ref, the `after` of a
/// deleted one.
pub const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// The longest ref name kiln takes (git itself has no limit; forges stop near here).
pub const MAX_REF_BYTES: usize = 255;

/// Whether `name` is a ref name git would accept (`git check-ref-format`'s rules, in short:
/// no control characters, space, `~ ^ : ? * [ \`, `..`, `@{`, `//`, no component starting
/// with `.` or ending with `.lock`, no trailing `/` or `.`), and short enough to keep.
pub fn valid_ref(name: &str) -> bool {
    name.len() <= MAX_REF_BYTES
        && !name.is_empty()
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("@{")
        && !name.contains("//")
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        && name
            .split('/')
            .all(|part| !part.starts_with('.') && !part.ends_with(".lock"))
}

/// A pushed ref, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// `refs/heads/NAME`, by NAME.
    Branch(String),
    /// `refs/tags/NAME`, by NAME.
    Tag(String),
    /// Any other ref (`refs/notes/commits`, `refs/pull/1/head`), whole.
    Other(String),
}

impl GitRef {
    /// `refs/heads/x` is the branch `x`, `refs/tags/v1` the tag `v1`; any other ref is kept
    /// whole.
    pub fn parse(full: &str) -> GitRef {
        let short = |prefix: &str| full.strip_prefix(prefix).filter(|s| !s.is_empty());
        if let Some(branch) = short("refs/heads/") {
            GitRef::Branch(branch.to_string())
        } else if let Some(tag) = short("refs/tags/") {
            GitRef::Tag(tag.to_string())
        } else {
            GitRef::Other(full.to_string())
        }
    }

    /// The branch's name, for a branch.
    pub fn branch(&self) -> Option<&str> {
        match self {
            GitRef::Branch(name) => Some(name.as_str()),
            GitRef::Tag(_) | GitRef::Other(_) => None,
        }
    }

    /// The short name: the branch's or the tag's, or the whole ref for any other.
    pub fn name(&self) -> &str {
        match self {
            GitRef::Branch(name) | GitRef::Tag(name) | GitRef::Other(name) => name.as_str(),
        }
    }
}

/// Why a push starts nothing, or `None` when it starts a run. `changed`: the paths changed
/// between the push's before and after commits, `None` when unknown (a new branch).
///
/// Without `on:`, every branch and tag push runs. With it, `branches` (when given) must
/// match a branch push and `tags` (when given) a tag push; when only one of the two is
/// given, pushes of the other kind do not run. The path filters apply to branch pushes
/// whose changed paths are known: with `paths`, a changed path must match one; with
/// `paths_ignore`, a changed path must match none. A ref that is neither a branch nor a
/// tag never runs.
pub fn filter(
    on: Option<&Triggers>,
    git_ref: &GitRef,
    changed: Option<&[String]>,
) -> Option<String> {
    let name = match git_ref {
        GitRef::Branch(name) | GitRef::Tag(name) => name,
        GitRef::Other(full) => {
            return Some(format!("ref {full:?} is neither a branch nor a tag"));
        }
    };
    let on = on?;
    let is_branch = matches!(git_ref, GitRef::Branch(_));
    let (kind, key, globs, other) = if is_branch {
        ("branch", "branches", &on.branches, &on.tags)
    } else {
        ("tag", "tags", &on.tags, &on.branches)
    };
    match globs {
        Some(globs) if !matches_any(globs, name) => {
            return Some(format!("{kind} {name:?} matches none of on.{key}"));
        }
        None if other.is_some() => {
            return Some(format!("{kind} pushes are not in on.{key}"));
        }
        _ => {}
    }
    let changed = match changed {
        Some(changed) if is_branch => changed,
        _ => return None,
    };
    if on.paths.is_empty() && on.paths_ignore.is_empty() {
        return None;
    }
    let matching = |globs: &[String]| changed.iter().filter(|p| matches_any(globs, p)).count();
    let reason = if changed.is_empty() {
        "the push changes no path, and on: filters by path"
    } else if !on.paths.is_empty() && matching(&on.paths) == 0 {
        "no changed path matches on.paths"
    } else if !on.paths_ignore.is_empty() && matching(&on.paths_ignore) == changed.len() {
        "every changed path matches on.paths_ignore"
    } else {
        return None;
    };
    Some(reason.to_string())
}

/// Does `text` match one of `globs`?
fn matches_any(globs: &[String], text: &str) -> bool {
    globs.iter().any(|glob| glob_matches(glob, text))
}

/// The markers that skip CI anywhere in a commit message, in lower case.
const SKIP_MARKERS: [&str; 3] = ["[skip ci]", "[ci skip]", "[no ci]"];

const SKIP_TRAILER: &str = "the head commit has the trailer skip-checks: true";

/// The reason when a head commit message asks to skip CI: `[skip ci]`, `[ci skip]` or
/// `[no ci]` anywhere (in any case), or the trailer `skip-checks: true` (the key in any
/// case, the value trimmed) in the message's last paragraph. As git reads trailers, the
/// first paragraph (the subject) holds none.
pub fn skip_requested(message: &str) -> Option<String> {
    let lower = message.to_lowercase();
    if let Some(marker) = SKIP_MARKERS.into_iter().find(|m| lower.contains(m)) {
        return Some(format!("the head commit asks to skip CI ({marker:?})"));
    }
    let lines: Vec<&str> = message.lines().collect();
    let end = lines.iter().rposition(|l| !l.trim().is_empty())? + 1;
    let start = lines[..end].iter().rposition(|l| l.trim().is_empty())? + 1;
    let subject = lines[..start].iter().all(|l| l.trim().is_empty());
    if subject || !lines[start..end].iter().any(|l| is_skip_trailer(l)) {
        return None;
    }
    Some(SKIP_TRAILER.to_string())
}

/// `skip-checks: true` as a trailer line (a line that starts with whitespace continues the
/// trailer above it).
fn is_skip_trailer(line: &str) -> bool {
    let Some((key, value)) = line.split_once(':') else {
        return false;
    };
    !line.starts_with(char::is_whitespace)
        && key.trim_end().eq_ignore_ascii_case("skip-checks")
        && value.trim() == "true"
}

/// The environment a branch deploys to, from a repository's branch map: ordered
/// `(glob, environment)` pairs, of which the first whose glob matches wins.
pub fn environment_for(branches: &[(String, String)], branch: &str) -> Option<String> {
    branches
        .iter()
        .find(|(glob, _)| glob_matches(glob, branch))
        .map(|(_, environment)| environment.clone())
}

/// Does `text` (a branch, a tag or a path) match `glob`, by kiln's glob rules (see the
/// module note)? An invalid glob matches nothing.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    matcher(glob).is_ok_and(|m| m.is_match(text))
}

/// Checks one glob (of `on:`, or of the CLI's `--branch GLOB=ENV`): `Err(reason)` when it
/// is empty or does not compile.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("an empty glob matches nothing".to_string());
    }
    if glob.starts_with('!') {
        return Err(
            "negation ('!') is not supported: use paths_ignore, or list what runs".to_string(),
        );
    }
    match matcher(glob) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.kind().to_string()),
    }
}

/// kiln's glob rules, the same on every platform: `*` stops at `/`, and `\` escapes.
fn matcher(glob: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// What a concurrency group's `${{ git.* }}` expressions stand for, for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GitContext<'a> {
    /// `${{ git.repository }}`: the repository, as kiln names it.
    pub repository: &'a str,
    /// `${{ git.ref }}`: the full ref (`refs/heads/main`).
    pub git_ref: &'a str,
    /// `${{ git.branch }}`: the branch pushed to ([`GitRef::branch`]); empty for a push
    /// that is not to a branch.
    pub branch: &'a str,
    /// `${{ git.commit }}`: the head commit's id.
    pub commit: &'a str,
}

impl GitContext<'_> {
    /// The value of `git.branch` and the like; `None` for any other name.
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "git.branch" => self.branch,
            "git.ref" => self.git_ref,
            "git.repository" => self.repository,
            "git.commit" => self.commit,
            _ => return None,
        })
    }
}

/// Substitutes `${{ git.branch }}`, `${{ git.ref }}`, `${{ git.repository }}` and
/// `${{ git.commit }}` (spaces inside the braces optional) in a concurrency group. Anything
/// else is left as written (validation refuses it: [`check_group`]).
pub fn expand_group(group: &str, ctx: &GitContext<'_>) -> String {
    let mut out = String::with_capacity(group.len());
    for piece in pieces(group) {
        match piece {
            Piece::Text(text) | Piece::Unclosed(text) => out.push_str(text),
            Piece::Expr(written, name) => out.push_str(ctx.get(name).unwrap_or(written)),
        }
    }
    out
}

/// Checks a concurrency group: not empty, and every `${{ }}` in it one that
/// [`expand_group`] fills in.
pub fn check_group(group: &str) -> Result<(), String> {
    if group.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    for piece in pieces(group) {
        match piece {
            Piece::Expr(written, name) if GitContext::default().get(name).is_none() => {
                return Err(format!(
                    "{written:?}: the only expressions here are ${{{{ git.branch }}}}, ${{{{ git.ref }}}}, ${{{{ git.repository }}}} and ${{{{ git.commit }}}}"
                ));
            }
            Piece::Unclosed(text) => {
                return Err(format!("{text:?} is not closed with }}}}"));
            }
            Piece::Text(_) | Piece::Expr(..) => {}
        }
    }
    Ok(())
}

/// A concurrency group, cut at its expressions.
enum Piece<'a> {
    Text(&'a str),
    /// `${{ name }}` as written, and the name inside, trimmed.
    Expr(&'a str, &'a str),
    /// A `${{` that no `}}` closes, and the rest of the group.
    Unclosed(&'a str),
}

fn pieces(group: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = group;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let open = &rest[start..];
        let Some(end) = open[3..].find("}}") else {
            out.push(Piece::Unclosed(open));
            return out;
        };
        let close = 3 + end + 2;
        out.push(Piece::Expr(&open[..close], open[3..3 + end].trim()));
        rest = &open[close..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

#[cfg(test)]
mod ref_tests {
    use super::valid_ref;

    #[test]
    fn ref_names_follow_gits_rules() {
        for ok in [
            "refs/heads/main",
            "refs/heads/feature/x-1",
            "refs/tags/v1.2.3",
        ] {
            assert!(valid_ref(ok), "{ok}");
        }
        let long = format!("refs/heads/{}", "x".repeat(300));
        for bad in [
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/x/",
            "refs/heads/a\nb",
            "refs/heads/a:b",
            long.as_str(),
        ] {
            assert!(!valid_ref(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Why `filter` starts nothing for a push of `full` that changes `changed` (paths
    /// separated by spaces; `None`: unknown).
    fn why(on: Option<&Triggers>, full: &str, changed: Option<&str>) -> Option<String> {
        let changed = changed.map(|c| strings(&c.split_whitespace().collect::<Vec<_>>()));
        filter(on, &GitRef::parse(full), changed.as_deref())
    }

    #[test]
    fn refs_by_kind() {
        let rows = [
            ("refs/heads/main", GitRef::Branch("main".into())),
            ("refs/heads/feature/x", GitRef::Branch("feature/x".into())),
            ("refs/tags/v1.2.0", GitRef::Tag("v1.2.0".into())),
            ("refs/notes/x", GitRef::Other("refs/notes/x".into())),
            ("refs/heads/", GitRef::Other("refs/heads/".into())),
            ("main", GitRef::Other("main".into())),
        ];
        for (full, want) in rows {
            assert_eq!(GitRef::parse(full), want, "{full}");
        }
        let branch = GitRef::parse("refs/heads/feature/x");
        assert_eq!(branch.branch(), Some("feature/x"));
        assert_eq!(branch.name(), "feature/x");
        let tag = GitRef::parse("refs/tags/v1");
        assert_eq!((tag.branch(), tag.name()), (None, "v1"));
        let other = GitRef::parse("refs/notes/x");
        assert_eq!((other.branch(), other.name()), (None, "refs/notes/x"));
    }

    #[test]
    fn filter_follows_on_push() {
        let main_release = Triggers {
            branches: Some(strings(&["main", "release/**"])),
            ..Triggers::default()
        };
        let features = Triggers {
            branches: Some(strings(&["feature/*"])),
            ..Triggers::default()
        };
        let tags = Triggers {
            tags: Some(strings(&["v*"])),
            ..Triggers::default()
        };
        let both = Triggers {
            branches: Some(strings(&["main"])),
            tags: Some(strings(&["v*"])),
            ..Triggers::default()
        };
        let paths = Triggers {
            paths: strings(&["src/**", "Cargo.*"]),
            ..Triggers::default()
        };
        let ignore = Triggers {
            paths_ignore: strings(&["docs/**", "*.md"]),
            ..Triggers::default()
        };
        let main_paths = Triggers {
            paths: strings(&["src/**"]),
            ..main_release.clone()
        };

        // Pushes that run: (on:, the pushed ref, the changed paths).
        let runs = [
            // Without on:, every branch and tag.
            (None, "refs/heads/any", Some("x")),
            (None, "refs/tags/v1", None),
            // on: without branches or tags filters neither.
            (Some(&paths), "refs/heads/any", None),
            (Some(&ignore), "refs/tags/v1", None),
            (Some(&main_release), "refs/heads/main", None),
            // ** crosses segments, * does not.
            (Some(&main_release), "refs/heads/release/1.2/fix", None),
            (Some(&features), "refs/heads/feature/a", None),
            (Some(&tags), "refs/tags/v1.2.0", None),
            (Some(&both), "refs/heads/main", None),
            (Some(&both), "refs/tags/v2", None),
            (Some(&paths), "refs/heads/main", Some("a.md src/lib.rs")),
            // Unknown changes (a new branch), and tags, are not path-filtered.
            (Some(&paths), "refs/heads/new", None),
            (Some(&paths), "refs/tags/v1", Some("a.md")),
            (Some(&ignore), "refs/heads/main", Some("a.md src/lib.rs")),
            // *.md is top-level only.
            (Some(&ignore), "refs/heads/main", Some("src/notes.md")),
        ];
        for (on, full, changed) in runs {
            assert_eq!(why(on, full, changed), None, "{full} {changed:?}");
        }

        // Pushes that do not, and why.
        let refused = [
            (
                None,
                "refs/notes/x",
                None,
                "ref \"refs/notes/x\" is neither a branch nor a tag",
            ),
            (
                Some(&main_release),
                "refs/heads/feature/x",
                None,
                "branch \"feature/x\" matches none of on.branches",
            ),
            (
                Some(&features),
                "refs/heads/feature/a/b",
                None,
                "branch \"feature/a/b\" matches none of on.branches",
            ),
            (
                Some(&main_release),
                "refs/tags/v1",
                None,
                "tag pushes are not in on.tags",
            ),
            (
                Some(&tags),
                "refs/tags/nightly",
                None,
                "tag \"nightly\" matches none of on.tags",
            ),
            (
                Some(&tags),
                "refs/heads/main",
                None,
                "branch pushes are not in on.branches",
            ),
            (
                Some(&paths),
                "refs/heads/main",
                Some("a.md docs/a.md"),
                "no changed path matches on.paths",
            ),
            (
                Some(&paths),
                "refs/heads/main",
                Some(""),
                "the push changes no path, and on: filters by path",
            ),
            (
                Some(&main_paths),
                "refs/heads/main",
                Some("docs/a.md"),
                "no changed path matches on.paths",
            ),
            (
                Some(&ignore),
                "refs/heads/main",
                Some("docs/a.md a.md"),
                "every changed path matches on.paths_ignore",
            ),
        ];
        for (on, full, changed, want) in refused {
            let got = why(on, full, changed);
            assert_eq!(got.as_deref(), Some(want), "{full} {changed:?}");
        }
    }

    #[test]
    fn skip_requests() {
        let markers = [
            ("fix the parser [skip ci]", "[skip ci]"),
            ("[CI Skip] fix the parser", "[ci skip]"),
            ("wip [no ci]", "[no ci]"),
            // Anywhere: here in the body only.
            ("fix\n\nDocs [skip ci].\n\nAcked-by: A\n", "[skip ci]"),
        ];
        for (message, marker) in markers {
            let want = format!("the head commit asks to skip CI ({marker:?})");
            assert_eq!(skip_requested(message), Some(want), "{message:?}");
        }
        let trailers = [
            "fix\n\nSigned-off-by: A <a@b.c>\nskip-checks: true\n",
            "fix\n\nSkip-Checks:true  \n\n",
            "fix\r\n\r\nskip-checks: true\r\n",
        ];
        for message in trailers {
            let want = Some(SKIP_TRAILER.to_string());
            assert_eq!(skip_requested(message), want, "{message:?}");
        }
        let not_skipped = [
            // A middle paragraph holds no trailers.
            "fix\n\nskip-checks: true\nsays the doc.\n\nSigned-off-by: A <a@b.c>\n",
            "fix\n\nskip-checks: false\n",
            "fix\n\n  skip-checks: true\n",
            // Nor does the subject.
            "skip-checks: true",
            "fix the parser [skip-ci]",
            "",
        ];
        for message in not_skipped {
            assert_eq!(skip_requested(message), None, "{message:?}");
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(glob, env)| (glob.to_string(), env.to_string()))
            .collect()
    }

    #[test]
    fn the_first_matching_branch_glob_names_the_environment() {
        let map = pairs(&[
            ("main", "production"),
            ("release/*", "staging"),
            ("[", "broken"),
            ("*", "dev"),
        ]);
        let star_first = pairs(&[("*", "dev"), ("main", "production")]);
        let none = Vec::new();
        let rows = [
            (&map, "main", Some("production")),
            (&map, "release/1.2", Some("staging")),
            (&map, "fix", Some("dev")),
            (&map, "feature/x", None),
            (&star_first, "main", Some("dev")),
            (&none, "main", None),
        ];
        for (map, branch, want) in rows {
            let got = environment_for(map, branch);
            assert_eq!(got.as_deref(), want, "{branch} in {map:?}");
        }
    }

    #[test]
    fn globs() {
        let rows = [
            ("main", "main", true),
            ("v*", "v1.2.0", true),
            ("*", "feature/x", false),
            ("**", "feature/x", true),
            ("release/**", "release/1/2", true),
            ("Cargo.*", "Cargo.toml", true),
            ("*.md", "docs/a.md", false),
            ("**/*.md", "docs/a.md", true),
            ("v[0-9]*", "v1", true),
            ("{main,dev}", "dev", true),
            ("[", "[", false),
        ];
        for (glob, text, want) in rows {
            assert_eq!(glob_matches(glob, text), want, "{glob} ~ {text}");
        }
        assert_eq!(check_glob("release/**"), Ok(()));
        let unclosed = Err("unclosed character class; missing ']'".to_string());
        assert_eq!(check_glob("["), unclosed);
        let empty = Err("an empty glob matches nothing".to_string());
        assert_eq!(check_glob(" "), empty);
    }

    #[test]
    fn concurrency_groups() {
        let ctx = GitContext {
            repository: "web",
            git_ref: "refs/heads/main",
            branch: "main",
            commit: "0123abc",
        };
        let rows = [
            ("deploy-${{ git.branch }}", "deploy-main"),
            ("${{git.repository}}:${{  git.ref }}", "web:refs/heads/main"),
            ("${{ git.commit }}${{ git.branch }}", "0123abcmain"),
            ("static", "static"),
            ("${{ github.ref }}-x", "${{ github.ref }}-x"),
            ("a-${{ git.branch", "a-${{ git.branch"),
        ];
        for (group, want) in rows {
            assert_eq!(expand_group(group, &ctx), want, "{group}");
        }
        for group in ["deploy-${{ git.branch }}", "${{git.commit}}", "plain"] {
            assert_eq!(check_group(group), Ok(()), "{group}");
        }
        let refused = [
            ("  ", "must not be empty"),
            ("${{ github.ref }}", "\"${{ github.ref }}\": the only"),
            ("${{}}", "\"${{}}\": the only expressions here are"),
            ("x-${{ git.branch", "\"${{ git.branch\" is not closed"),
        ];
        for (group, want) in refused {
            let got = check_group(group).unwrap_err();
            assert!(got.starts_with(want), "{group}: {got}");
        }
    }
}
