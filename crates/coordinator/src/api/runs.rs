//! `ListRuns`: runs in memory and in the archive, newest first, filtered and paged.

use kiln_api::pb;

use super::convert;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::state::{Run, parse_run_id};

/// A page, at most.
pub const MAX_PAGE: usize = 1000;

pub fn list(core: &Core, req: pb::ListRunsRequest) -> Result<pb::ListRunsResponse> {
    let before = match req.before.as_str() {
        "" => None,
        id => Some(
            parse_run_id(id)
                .ok_or_else(|| Error::InvalidInput(format!("before: {id:?} is not a run id")))?,
        ),
    };
    let statuses = ["pending", "running", "succeeded", "failed", "cancelled"];
    if !req.status.is_empty() && !statuses.contains(&req.status.as_str()) {
        return Err(Error::InvalidInput(format!(
            "status: {:?} is not one of {}",
            req.status,
            statuses.join(", ")
        )));
    }
    let keep = |r: &Run| {
        (req.pipeline.is_empty() || r.pipeline.name == req.pipeline)
            && (req.status.is_empty() || r.status.as_str() == req.status)
            && before.is_none_or(|b| r.number < b)
    };
    let waiting = core.waiting();
    if req.limit == 0 {
        // Every run in memory, oldest first, as before paging.
        let state = core.state.read();
        let runs = state
            .runs
            .values()
            .filter(|r| keep(r))
            .map(|r| convert::run(r, &waiting))
            .collect();
        return Ok(pb::ListRunsResponse {
            runs,
            next: String::new(),
        });
    }
    let limit = (req.limit as usize).min(MAX_PAGE);
    // One more than asked, to know whether there is a next page.
    let mut page: Vec<Run> = {
        let state = core.state.read();
        state
            .runs
            .values()
            .rev()
            .filter(|r| keep(r))
            .take(limit + 1)
            .cloned()
            .collect()
    };
    // Archived runs are older than every run in memory of their pipeline, but not of every
    // pipeline: merge by number.
    page.extend(core.state.archived_before(before, limit + 1, keep));
    page.sort_by_key(|r| std::cmp::Reverse(r.number));
    page.dedup_by_key(|r| r.number);
    let more = page.len() > limit;
    page.truncate(limit);
    let next = match (more, page.last()) {
        (true, Some(last)) => crate::state::run_id(last.number),
        _ => String::new(),
    };
    Ok(pb::ListRunsResponse {
        runs: page.iter().map(|r| convert::run(r, &waiting)).collect(),
        next,
    })
}
