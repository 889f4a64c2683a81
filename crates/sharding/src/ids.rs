//! Test ids: what a suite's `list:` command prints, one a line, and how the cases of a JUnit
//! report are matched back to them.
//!
//! Runners print ids in their own syntax and write reports in another: pytest lists
//! `tests/test_x.py::TestA::test_b[1]` and reports `classname="tests.test_x.TestA"
//! name="test_b[1]"`; nextest lists `kiln-api validate::tests::cycle` and reports the binary
//! in `classname` and the path in `name`. Both sides are brought to one [`normalize`]d form
//! — separators (`::`, `/`, spaces, `#`) become dots, source-file extensions go — and a case
//! belongs to the listed id that equals one of its keys or is the longest dotted prefix of
//! one. The prefix rule is what lets a suite split by file or by class: list
//! `tests/test_x.py` and every case in that module folds into that one id.
//!
//! Text inside `[...]` (pytest's parameters) is compared as it is.

use std::collections::HashMap;

use crate::junit::{Case, Outcome};

/// The verdict on one listed id, folded from the report's cases that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdResult {
    pub id: String,
    pub outcome: Outcome,
    /// The sum of its cases' times (cases without a time add nothing).
    pub time_ms: u64,
    pub message: String,
    /// How many report cases it was folded from; 0 when the report had none.
    pub cases: u32,
}

/// What a report said about one batch of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// One per id, in the batch's order.
    pub results: Vec<IdResult>,
    /// Report cases that belong to no id of the batch.
    pub unmatched: usize,
}

/// The message of an id that no case in the report belongs to.
pub const NO_RESULT: &str = "no result for this test in the JUnit report";

/// Splits the text a `list:` command printed into ids: one per non-blank line, trimmed,
/// duplicates dropped (first kept).
pub fn parse_list(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| seen.insert(*l))
        .map(str::to_string)
        .collect()
}

/// Folds a report's cases into one result per id of `batch`.
pub fn match_cases(batch: &[String], cases: &[Case]) -> Matched {
    // Ids that normalise alike (`t/a.py` and `t/a.js`) name the same cases: each gets them.
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, id) in batch.iter().enumerate() {
        index.entry(normalize(id)).or_default().push(i);
    }
    let mut results: Vec<IdResult> = batch
        .iter()
        .map(|id| IdResult {
            id: id.clone(),
            outcome: Outcome::Errored,
            time_ms: 0,
            message: NO_RESULT.into(),
            cases: 0,
        })
        .collect();
    let mut unmatched = 0;
    for case in cases {
        let Some(owners) = owner(&index, case) else {
            unmatched += 1;
            continue;
        };
        for &i in owners {
            let r = &mut results[i];
            if r.cases == 0 {
                r.outcome = case.outcome;
                r.message = case.message.clone();
            } else if severity(case.outcome) > severity(r.outcome) {
                r.outcome = case.outcome;
                r.message = format!("{}: {}", case.name, case.message);
            }
            r.cases += 1;
            r.time_ms = r.time_ms.saturating_add(case.time_ms.unwrap_or(0));
        }
    }
    Matched { results, unmatched }
}

/// Which outcome of several cases speaks for their id: any failure, else any error, else a
/// pass; all skipped is skipped.
fn severity(o: Outcome) -> u8 {
    match o {
        Outcome::Skipped => 0,
        Outcome::Passed => 1,
        Outcome::Errored => 2,
        Outcome::Failed => 3,
    }
}

/// The batch indices of the id a case belongs to: the longest listed id that equals one of
/// the case's keys or is a dotted prefix of it.
fn owner<'i>(index: &'i HashMap<String, Vec<usize>>, case: &Case) -> Option<&'i Vec<usize>> {
    let mut keys = vec![
        normalize(&format!("{}.{}", case.classname, case.name)),
        normalize(&case.name),
    ];
    if let Some(file) = &case.file {
        keys.push(normalize(&format!("{file}.{}", case.name)));
    }
    keys.iter()
        .filter_map(|key| prefixes(key).find_map(|p| index.get(p).map(|i| (p.len(), i))))
        .max_by_key(|(len, _)| *len)
        .map(|(_, i)| i)
}

/// `key` itself, then each shorter prefix that ends at a dot or a `[`, longest first.
fn prefixes(key: &str) -> impl Iterator<Item = &str> {
    let bare = key.find('[').unwrap_or(key.len());
    let cuts = key[..bare]
        .char_indices()
        .filter(|&(_, c)| c == '.')
        .map(|(i, _)| i)
        .chain((bare < key.len()).then_some(bare))
        .collect::<Vec<_>>();
    std::iter::once(key).chain(cuts.into_iter().rev().map(move |i| &key[..i]))
}

/// The form ids and report keys are compared in: `::`, `/`, `\`, `#` and spaces become
/// dots, source extensions (`.py`, `.rs`, `.js`, `.ts`, `.go`, ...) and leading `./` go,
/// runs of dots collapse. The part from the first `[` on is kept as it is.
pub fn normalize(id: &str) -> String {
    let (head, params) = id.split_at(id.find('[').unwrap_or(id.len()));
    let mut s = head.replace("::", ".");
    s = s.replace(['/', '\\', '#', ' '], ".");
    for ext in [
        ".py", ".rs", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go",
    ] {
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(at) = rest.find(ext) {
            let after = &rest[at + ext.len()..];
            out.push_str(&rest[..at]);
            if !(after.is_empty() || after.starts_with('.')) {
                out.push_str(ext);
            }
            rest = after;
        }
        out.push_str(rest);
        s = out;
    }
    let mut collapsed = String::with_capacity(s.len() + params.len());
    for part in s.split('.').filter(|p| !p.is_empty()) {
        if !collapsed.is_empty() {
            collapsed.push('.');
        }
        collapsed.push_str(part);
    }
    collapsed.push_str(params);
    collapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(classname: &str, name: &str, file: Option<&str>, outcome: Outcome) -> Case {
        Case {
            name: name.into(),
            classname: classname.into(),
            file: file.map(str::to_string),
            time_ms: Some(100),
            outcome,
            message: format!("{name} said so"),
        }
    }

    #[test]
    fn normal_forms() {
        assert_eq!(
            normalize("tests/test_x.py::TestA::test_b[1/2.py]"),
            "tests.test_x.TestA.test_b[1/2.py]"
        );
        assert_eq!(
            normalize("kiln-api validate::tests::cycle"),
            "kiln-api.validate.tests.cycle"
        );
        assert_eq!(normalize("./src/sum.test.js"), "src.sum.test");
        assert_eq!(normalize("pkg/TestFoo/sub_case"), "pkg.TestFoo.sub_case");
        assert_eq!(normalize("com.acme.FooTest#bar"), "com.acme.FooTest.bar");
        assert_eq!(
            normalize("tests/pytest_plugin.pyi"),
            "tests.pytest_plugin.pyi"
        );
    }

    #[test]
    fn pytest_node_ids_match_xunit2_cases() {
        let batch = vec![
            "tests/test_x.py::TestA::test_b[1]".to_string(),
            "tests/test_y.py::test_c".into(),
        ];
        let cases = [
            case("tests.test_x.TestA", "test_b[1]", None, Outcome::Passed),
            case("tests.test_y", "test_c", None, Outcome::Failed),
        ];
        let m = match_cases(&batch, &cases);
        assert_eq!(m.unmatched, 0);
        assert_eq!(m.results[0].outcome, Outcome::Passed);
        assert_eq!(m.results[1].outcome, Outcome::Failed);
        assert_eq!(m.results[1].message, "test_c said so");
    }

    #[test]
    fn nextest_ids_match_binary_and_path() {
        let batch = vec!["kiln-api validate::tests::cycle".to_string()];
        let cases = [case(
            "kiln-api",
            "validate::tests::cycle",
            None,
            Outcome::Passed,
        )];
        assert_eq!(match_cases(&batch, &cases).results[0].cases, 1);
    }

    #[test]
    fn a_file_id_folds_its_cases_and_the_worst_wins() {
        let batch = vec![
            "tests/test_x.py".to_string(),
            "tests/test_x2.py".to_string(),
        ];
        let cases = [
            case("tests.test_x.TestA", "a", None, Outcome::Passed),
            case("tests.test_x", "b", None, Outcome::Skipped),
            case("tests.test_x", "c", None, Outcome::Failed),
            case("tests.test_x2", "d", None, Outcome::Skipped),
        ];
        let m = match_cases(&batch, &cases);
        assert_eq!(m.results[0].cases, 3);
        assert_eq!(m.results[0].time_ms, 300);
        assert_eq!(m.results[0].outcome, Outcome::Failed);
        assert_eq!(m.results[0].message, "c: c said so");
        assert_eq!(
            m.results[1].outcome,
            Outcome::Skipped,
            "test_x2 is not test_x's prefix"
        );
    }

    #[test]
    fn jest_cases_match_by_file() {
        let batch = vec!["src/sum.test.js".to_string()];
        let cases = [case(
            "sum adds",
            "sum adds",
            Some("src/sum.test.js"),
            Outcome::Passed,
        )];
        assert_eq!(
            match_cases(&batch, &cases).results[0].outcome,
            Outcome::Passed
        );
    }

    #[test]
    fn missing_and_foreign_cases() {
        let batch = vec!["a.b".to_string()];
        let m = match_cases(&batch, &[case("x", "y", None, Outcome::Passed)]);
        assert_eq!(m.unmatched, 1);
        assert_eq!(m.results[0].outcome, Outcome::Errored);
        assert_eq!(m.results[0].message, NO_RESULT);
    }

    #[test]
    fn ids_that_normalise_alike_each_get_their_cases() {
        let batch = vec!["t/a.py".to_string(), "t/a.js".to_string()];
        let m = match_cases(&batch, &[case("t.a", "x", None, Outcome::Passed)]);
        assert_eq!((m.results[0].cases, m.results[1].cases), (1, 1));
    }

    #[test]
    fn the_longest_listed_id_wins() {
        let batch = vec!["t/a.py".to_string(), "t/a.py::K::m".to_string()];
        let m = match_cases(&batch, &[case("t.a.K", "m", None, Outcome::Passed)]);
        assert_eq!((m.results[0].cases, m.results[1].cases), (0, 1));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_list("a\n\n  b \na\n"), vec!["a", "b"]);
        assert!(parse_list(" \n").is_empty());
    }
}
