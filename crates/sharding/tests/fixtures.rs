//! The JUnit parser and the id matcher on reports that real runners wrote (see
//! `fixtures/README.md` for how each was produced): every id the runner listed finds its
//! case, and the outcomes are the runner's.

use kiln_sharding::ids::{self, match_cases};
use kiln_sharding::junit::{self, Case, Outcome};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cases(name: &str) -> Vec<Case> {
    junit::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn count(cases: &[Case], outcome: Outcome) -> usize {
    cases.iter().filter(|c| c.outcome == outcome).count()
}

/// Every listed id matches exactly one case and no case is left over.
fn ids_match_one_to_one(report: &str, list: &str) {
    let cases = cases(report);
    let ids = ids::parse_list(&fixture(list));
    let m = match_cases(&ids, &cases);
    assert_eq!(m.unmatched, 0, "{report}: cases matching no id");
    for r in &m.results {
        assert_eq!(r.cases, 1, "{report}: {} matched {} cases", r.id, r.cases);
    }
    assert_eq!(ids.len(), cases.len(), "{report}");
}

#[test]
fn pytest_more_itertools_both_families() {
    for report in [
        "pytest-more-itertools.xml",
        "pytest-more-itertools-xunit2.xml",
    ] {
        let c = cases(report);
        assert_eq!(c.len(), 765, "{report}");
        assert_eq!(count(&c, Outcome::Passed), 765, "{report}");
        assert!(c.iter().all(|c| c.time_ms.is_some()), "{report}");
        ids_match_one_to_one(report, "pytest-more-itertools.ids");
    }
    let xunit1 = cases("pytest-more-itertools.xml");
    assert!(
        xunit1.iter().all(|c| c.file.is_some()),
        "xunit1 carries file"
    );
}

#[test]
fn pytest_packaging_with_odd_parameters_and_skips() {
    for report in ["pytest-packaging.xml", "pytest-packaging-xunit2.xml"] {
        let c = cases(report);
        assert_eq!(c.len(), 2733, "{report}");
        assert_eq!(count(&c, Outcome::Skipped), 2, "{report}");
        ids_match_one_to_one(report, "pytest-packaging.ids");
    }
}

#[test]
fn pytest_mixed_outcomes() {
    for report in ["pytest-mixed.xml", "pytest-mixed-xunit1.xml"] {
        let c = cases(report);
        assert_eq!(c.len(), 8, "{report}");
        assert_eq!(count(&c, Outcome::Failed), 2, "{report}");
        assert_eq!(count(&c, Outcome::Errored), 1, "{report}");
        assert_eq!(count(&c, Outcome::Skipped), 1, "{report}");
        ids_match_one_to_one(report, "pytest-mixed.ids");
        let m = match_cases(&ids::parse_list(&fixture("pytest-mixed.ids")), &c);
        let failed: Vec<&str> = m
            .results
            .iter()
            .filter(|r| r.outcome.is_failure())
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert!(failed.contains(&"test_tiny.py::test_error"), "{failed:?}");
    }
}

#[test]
fn pytest_edge_cases_teardown_errors_xfail_and_dotted_parameters() {
    for report in ["pytest-edge.xml", "pytest-edge-xunit1.xml"] {
        ids_match_one_to_one(report, "pytest-edge.ids");
        let c = cases(report);
        let by = |n: &str| c.iter().find(|c| c.name == n).unwrap().outcome;
        assert_eq!(by("test_teardown_error"), Outcome::Errored);
        assert_eq!(by("test_xfail"), Outcome::Skipped);
        assert_eq!(by("test_xpass"), Outcome::Passed);
    }
}

#[test]
fn pytest_files_as_ids_fold_their_cases() {
    let c = cases("pytest-packaging-xunit2.xml");
    let files: Vec<String> = ids::parse_list(&fixture("pytest-packaging.ids"))
        .iter()
        .map(|id| id.split("::").next().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(files.len(), 4);
    let m = match_cases(&files, &c);
    assert_eq!(m.unmatched, 0);
    assert_eq!(
        m.results.iter().map(|r| r.cases as usize).sum::<usize>(),
        2733
    );
}

#[test]
fn go_junit_report_packages_and_subtests() {
    let c = cases("go-junit-report-001-pass-fail-skip.xml");
    assert_eq!(c.len(), 5);
    assert_eq!(count(&c, Outcome::Failed), 1);
    assert_eq!(count(&c, Outcome::Skipped), 2);
    let c = cases("go-junit-report-012-subtests.xml");
    assert_eq!(c.len(), 11);
    assert_eq!(count(&c, Outcome::Failed), 4);
    // A parent test listed alone takes its subtests with it.
    let parents: Vec<String> = c
        .iter()
        .filter(|c| !c.name.contains('/'))
        .map(|c| format!("{}.{}", c.classname, c.name))
        .collect();
    let m = match_cases(&parents, &c);
    assert_eq!(m.unmatched, 0);
    assert_eq!(m.results.iter().map(|r| r.cases).sum::<u32>(), 11);
}

#[test]
fn jest_junit_reports() {
    let c = cases("jest-junit-fail-skip.xml");
    assert_eq!(c.len(), 3);
    assert_eq!(count(&c, Outcome::Failed), 1);
    assert_eq!(count(&c, Outcome::Skipped), 2);
    let c = cases("jest-junit-multi-suite.xml");
    assert_eq!(c.len(), 8);
    // jest-junit repeats the full title as classname and name: that title is the id.
    let titles: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
    let m = match_cases(&titles, &c);
    assert_eq!(m.unmatched, 0);
    assert!(
        m.results
            .iter()
            .all(|r| r.cases == 1 && r.outcome == Outcome::Passed)
    );
}

#[test]
fn nextest_reports_of_kiln_itself() {
    let c = cases("nextest-kiln.xml");
    assert_eq!(c.len(), 124);
    assert!(
        c.iter()
            .all(|c| c.outcome == Outcome::Passed && c.time_ms.is_some())
    );
    // `cargo nextest list --message-format oneline` ids: "BINARY-ID TEST-NAME".
    ids_match_one_to_one("nextest-kiln.xml", "nextest-kiln.ids");
}
