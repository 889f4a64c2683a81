//! Choosing the exact GPUs for a task on one node.
//!
//! - A **share** (`gpu_memory`) goes on the GPU that is already shared and has the least room
//!   left that still fits (best fit), and on a fresh GPU only when no shared one fits: whole
//!   GPUs stay whole for the tasks that need them.
//! - **Whole GPUs** (`gpus: N`) go on the set of free GPUs with the most NVLink links inside it
//!   (a fully connected set when there is one), breaking as few links to other free GPUs as
//!   possible; a single GPU goes where it breaks the fewest (isolated GPUs first).
//!
//! Which GPUs can take a grant at all is `state::fit::grant_fits`, the rule the state
//! machine applies again to the chosen grants (`state::fit::gpus_fit`). The answer carries
//! a score in 0..=1 for ranking nodes against each other.

use kiln_api::spec::GpuRequest;

use crate::state::fit::{GpuUse, Misfit, grant_fits};
use crate::state::{Gpu, GpuGrant, Node};

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub grants: Vec<GpuGrant>,
    /// How good this choice is, 0..=1.
    pub score: f64,
}

/// One GPU as the pass sees it: the node's reservations plus the pass's own.
struct View<'a> {
    gpu: &'a Gpu,
    used: GpuUse,
}

impl View<'_> {
    fn index(&self) -> u32 {
        self.gpu.index
    }

    /// A whole GPU could go here.
    fn free(&self) -> bool {
        grant_fits(self.gpu, self.used, true, self.gpu.memory_bytes).is_ok()
    }

    /// A share of `bytes` could go here.
    fn fits_share(&self, bytes: u64) -> bool {
        grant_fits(self.gpu, self.used, false, bytes).is_ok()
    }
}

/// Above this many free GPUs, whole-GPU sets are chosen greedily instead of exhaustively.
const EXHAUSTIVE_UP_TO: usize = 12;

pub fn choose(node: &Node, planned: &[GpuGrant], request: &GpuRequest) -> Result<Choice, Misfit> {
    if node.gpus.is_empty() {
        return Err(Misfit::NoGpus);
    }
    let views: Vec<View> = node
        .gpus
        .iter()
        .filter(|g| request.accepts(&g.model, g.memory_bytes))
        .map(|gpu| View {
            gpu,
            used: GpuUse::of(gpu, planned),
        })
        .collect();
    if views.is_empty() {
        return Err(Misfit::GpuModel);
    }
    let total = node.gpus.len() as f64;
    let busy_before = node
        .gpus
        .iter()
        .filter(|g| !g.is_free() || planned.iter().any(|p| p.index == g.index))
        .count();

    if request.is_share() {
        let fit = views
            .iter()
            .filter(|v| v.fits_share(request.share_bytes))
            .min_by_key(|v| {
                (
                    v.used.shared_bytes == 0,
                    v.gpu.memory_bytes - v.used.shared_bytes - request.share_bytes,
                    v.index(),
                )
            })
            .ok_or(Misfit::GpuMemory)?;
        let shared = fit.used.shared_bytes > 0;
        let keeps_whole = if shared { 1.0 } else { 0.0 };
        let busy_after = busy_before as f64 + if shared { 0.0 } else { 1.0 };
        return Ok(Choice {
            grants: vec![GpuGrant {
                index: fit.index(),
                whole: false,
                memory_bytes: request.share_bytes,
            }],
            score: 0.6 * keeps_whole + 0.4 * busy_after / total,
        });
    }

    let free: Vec<&View> = views.iter().filter(|v| v.free()).collect();
    let n = request.count as usize;
    if free.len() < n {
        return Err(Misfit::Gpus);
    }
    let set = if free.len() <= EXHAUSTIVE_UP_TO {
        best_set(&free, n)
    } else {
        greedy_set(&free, n)
    };
    let chosen: Vec<&View> = set.iter().map(|&i| free[i]).collect();
    let connectivity = if n <= 1 {
        1.0
    } else {
        internal_links(&chosen) as f64 / (n * (n - 1) / 2) as f64
    };
    let grants = chosen
        .iter()
        .map(|v| GpuGrant {
            index: v.index(),
            whole: true,
            memory_bytes: v.gpu.memory_bytes,
        })
        .collect();
    Ok(Choice {
        grants,
        score: 0.6 * connectivity + 0.4 * (busy_before + n) as f64 / total,
    })
}

fn linked(a: &View, b: &View) -> bool {
    a.gpu.nvlink_peers.contains(&b.index()) || b.gpu.nvlink_peers.contains(&a.index())
}

fn internal_links(set: &[&View]) -> usize {
    let mut links = 0;
    for (i, a) in set.iter().enumerate() {
        links += set[i + 1..].iter().filter(|b| linked(a, b)).count();
    }
    links
}

/// Links from the set to free GPUs outside it (broken by taking the set).
fn broken_links(set: &[usize], free: &[&View]) -> usize {
    set.iter()
        .map(|&i| {
            (0..free.len())
                .filter(|j| !set.contains(j) && linked(free[i], free[*j]))
                .count()
        })
        .sum()
}

/// The best `n` of `free`, by (most internal links, fewest broken links, lowest indices).
fn best_set(free: &[&View], n: usize) -> Vec<usize> {
    let mut best: Option<(usize, usize, Vec<usize>)> = None;
    let mut current = Vec::with_capacity(n);
    combinations(free.len(), n, 0, &mut current, &mut |set| {
        let views: Vec<&View> = set.iter().map(|&i| free[i]).collect();
        let key = (internal_links(&views), broken_links(set, free));
        let better = match &best {
            None => true,
            Some((links, broken, _)) => key.0 > *links || (key.0 == *links && key.1 < *broken),
        };
        if better {
            best = Some((key.0, key.1, set.to_vec()));
        }
    });
    best.map(|(_, _, s)| s).unwrap_or_default()
}

fn combinations(
    len: usize,
    n: usize,
    from: usize,
    current: &mut Vec<usize>,
    visit: &mut dyn FnMut(&[usize]),
) {
    if current.len() == n {
        visit(current);
        return;
    }
    for i in from..len {
        if len - i < n - current.len() {
            break;
        }
        current.push(i);
        combinations(len, n, i + 1, current, visit);
        current.pop();
    }
}

/// For many free GPUs: grow a set from each start, adding the GPU with the most links into it.
fn greedy_set(free: &[&View], n: usize) -> Vec<usize> {
    let mut best: Option<(usize, Vec<usize>)> = None;
    for start in 0..free.len() {
        let mut set = vec![start];
        while set.len() < n {
            let next = (0..free.len())
                .filter(|i| !set.contains(i))
                .max_by_key(|&i| {
                    (
                        set.iter().filter(|&&j| linked(free[i], free[j])).count(),
                        usize::MAX - i,
                    )
                });
            match next {
                Some(i) => set.push(i),
                None => break,
            }
        }
        let views: Vec<&View> = set.iter().map(|&i| free[i]).collect();
        let links = internal_links(&views);
        if best.as_ref().is_none_or(|(l, _)| links > *l) {
            best = Some((links, set));
        }
    }
    best.map(|(_, s)| s).unwrap_or_default()
}
