//! JUnit XML, as real runners write it, read into flat [`Case`]s.
//!
//! There is no one JUnit format, only habits that agree on the core: `<testcase>` elements
//! with `name`, usually `classname`, sometimes `file`, and `time` in seconds, inside one or
//! more `<testsuite>`s that may nest, under an optional `<testsuites>` root. A case's
//! children say how it ended: `<failure>`, `<error>` or `<skipped>`; none means it passed.
//! What the runners differ in, and how each difference is met here:
//!
//! - pytest (xunit1) puts `file` and `line` on cases; pytest's default (xunit2) has neither.
//! - cargo nextest names the test binary in `classname` and the test path in `name`.
//! - go-junit-report puts the package in `classname` and may nest suites.
//! - jest-junit repeats the describe blocks in `classname` and may omit `time`.
//! - Surefire's `<flakyFailure>` / `<rerunFailure>` record earlier tries of a case that
//!   finally passed; they do not make it fail.
//!
//! A case without `classname` takes its nearest suite's `name`; one without `file` takes its
//! nearest suite's `file`. A missing or unreadable `time` is `None`, never an error. XML
//! that does not parse, or whose root is not a suite, is an error with its line.

use std::fmt;

/// How a test case ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Outcome {
    Passed,
    Skipped,
    Failed,
    /// The runner could not run it to a verdict (an exception outside the test body, a
    /// crash, no result at all).
    Errored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Errored => "errored",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "passed" => Outcome::Passed,
            "skipped" => Outcome::Skipped,
            "failed" => Outcome::Failed,
            "errored" => Outcome::Errored,
            _ => return None,
        })
    }

    /// Failed or errored: the test did not pass and was not skipped.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Errored)
    }
}

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    /// The case's `classname`, or its nearest suite's `name`.
    pub classname: String,
    /// The case's `file`, or its nearest suite's.
    pub file: Option<String>,
    pub time_ms: Option<u64>,
    pub outcome: Outcome,
    /// The first line of the failure, error or skip message.
    pub message: String,
}

/// A report that is not JUnit XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Malformed {
    /// 1-based; 0 when the problem has no one place.
    pub line: u32,
    pub reason: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        f.write_str(&self.reason)
    }
}

/// The longest message kept per case: enough to recognise a failure, not a whole traceback.
const MAX_MESSAGE: usize = 300;

/// Reads every test case in a JUnit XML document, in document order.
pub fn parse(xml: &str) -> Result<Vec<Case>, Malformed> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Malformed {
        line: e.pos().row,
        reason: format!("not well-formed XML: {e}"),
    })?;
    let root = doc.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Err(Malformed {
            line: doc.text_pos_at(root.range().start).row,
            reason: format!(
                "the root element is <{}>, not <testsuites> or <testsuite>",
                root.tag_name().name()
            ),
        });
    }
    let mut cases = Vec::new();
    collect(root, &Inherited::default(), &mut cases);
    Ok(cases)
}

/// What a case takes from the suites around it.
#[derive(Default, Clone)]
struct Inherited {
    suite: String,
    file: Option<String>,
}

fn collect(node: roxmltree::Node, from: &Inherited, out: &mut Vec<Case>) {
    for child in node.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "testsuite" | "testsuites" => {
                let inner = Inherited {
                    suite: child
                        .attribute("name")
                        .map_or(from.suite.clone(), str::to_string),
                    file: child
                        .attribute("file")
                        .map(str::to_string)
                        .or(from.file.clone()),
                };
                collect(child, &inner, out);
            }
            "testcase" => out.push(case(child, from)),
            _ => {}
        }
    }
}

fn case(node: roxmltree::Node, from: &Inherited) -> Case {
    let mut outcome = Outcome::Passed;
    let mut message = String::new();
    for child in node.children().filter(|n| n.is_element()) {
        let this = match child.tag_name().name() {
            "failure" => Outcome::Failed,
            "error" => Outcome::Errored,
            "skipped" => Outcome::Skipped,
            _ => continue,
        };
        // A failure outweighs an error (pytest reports a failing test whose teardown also
        // broke with both), and either outweighs a skip.
        let rank = |o: Outcome| match o {
            Outcome::Passed => 0,
            Outcome::Skipped => 1,
            Outcome::Errored => 2,
            Outcome::Failed => 3,
        };
        if rank(this) > rank(outcome) {
            outcome = this;
            message = first_line(
                child
                    .attribute("message")
                    .filter(|m| !m.trim().is_empty())
                    .or(child.text())
                    .unwrap_or(""),
            );
        }
    }
    Case {
        name: node.attribute("name").unwrap_or("").to_string(),
        classname: node
            .attribute("classname")
            .filter(|c| !c.is_empty())
            .map_or(from.suite.clone(), str::to_string),
        file: node
            .attribute("file")
            .map(str::to_string)
            .or(from.file.clone()),
        time_ms: node.attribute("time").and_then(seconds_to_ms),
        outcome,
        message,
    }
}

/// `"1.5"` seconds → 1500 ms; tolerates a thousands separator (`"1,234.5"`, as some
/// locale-aware runners write). Negative, infinite or unreadable times are unknown.
fn seconds_to_ms(text: &str) -> Option<u64> {
    let s: f64 = text.trim().replace(',', "").parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

fn first_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_nesting_and_inheritance() {
        let xml = r#"<?xml version="1.0"?>
<testsuites>
  <testsuite name="outer" file="a/outer.py">
    <testsuite name="inner">
      <testcase name="ok" time="0.25"/>
      <testcase name="bad" classname="K" time="1"><failure message="assert 1 == 2">trace</failure></testcase>
    </testsuite>
    <testcase name="skip" classname="K" file="b.py"><skipped/></testcase>
    <testcase name="boom" classname="K" time="n/a"><error>RuntimeError: x
more</error></testcase>
    <testcase name="both" classname="K"><error message="teardown"/><failure message="body"/></testcase>
    <testcase name="flaky" classname="K"><flakyFailure message="once"/></testcase>
  </testsuite>
</testsuites>"#;
        let cases = parse(xml).unwrap();
        let by = |n: &str| cases.iter().find(|c| c.name == n).unwrap();
        assert_eq!(cases.len(), 6);
        assert_eq!(by("ok").classname, "inner");
        assert_eq!(by("ok").file.as_deref(), Some("a/outer.py"));
        assert_eq!(by("ok").time_ms, Some(250));
        assert_eq!(by("ok").outcome, Outcome::Passed);
        assert_eq!(by("bad").outcome, Outcome::Failed);
        assert_eq!(by("bad").message, "assert 1 == 2");
        assert_eq!(by("skip").outcome, Outcome::Skipped);
        assert_eq!(by("skip").file.as_deref(), Some("b.py"));
        assert_eq!(by("boom").outcome, Outcome::Errored);
        assert_eq!(by("boom").message, "RuntimeError: x");
        assert_eq!(by("boom").time_ms, None);
        assert_eq!(by("both").outcome, Outcome::Failed);
        assert_eq!(by("flaky").outcome, Outcome::Passed);
    }

    #[test]
    fn a_bare_testsuite_root_is_fine() {
        let cases = parse(r#"<testsuite name="s"><testcase name="t" time="2.5"/></testsuite>"#);
        assert_eq!(cases.unwrap()[0].time_ms, Some(2500));
    }

    #[test]
    fn broken_xml_names_its_line() {
        let err = parse("<testsuites>\n<testcase name='a'>\n</testsuites>").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert!(err.to_string().contains("not well-formed"), "{err}");
    }

    #[test]
    fn a_root_that_is_not_a_suite_is_refused() {
        let err = parse("<html><body/></html>").unwrap_err();
        assert!(err.reason.contains("<html>"), "{err}");
    }

    #[test]
    fn times() {
        assert_eq!(seconds_to_ms("0.0015"), Some(2));
        assert_eq!(seconds_to_ms("1,234.5"), Some(1_234_500));
        assert_eq!(seconds_to_ms("-1"), None);
        assert_eq!(seconds_to_ms("NaN"), None);
    }
}
