//! What a backup holds of the state: the blobs it names, and putting a restored state in
//! place (`Command::Restore`, the first command of a cluster made from a backup, so that
//! every member, and every member that joins later, gets it through the log).

use std::collections::BTreeSet;

use kiln_api::spec::Container;

use super::ClusterState;
use super::command::{AccessChanged, Response};

impl ClusterState {
    /// Every blob the state names: build contexts, model artifacts, published artifacts.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        for run in self.runs.values() {
            for stage in &run.pipeline.stages {
                if let Some(Container::Build(b)) = &stage.container
                    && !b.context_digest.is_empty()
                {
                    all.insert(b.context_digest.clone());
                }
            }
            for attempt in run
                .stages
                .iter()
                .flat_map(|s| &s.shards)
                .flat_map(|t| &t.attempts)
            {
                all.extend(attempt.artifacts.values().cloned());
            }
        }
        for service in self.services.values() {
            all.extend(
                service
                    .revisions
                    .iter()
                    .filter_map(|r| r.model_digest.clone()),
            );
        }
        all
    }

    /// Replaces the state with a restored one. Accepted only while the cluster holds
    /// nothing but the nodes that registered since it started (a new cluster's first
    /// command): a restore never merges. Those registrations are kept over the backup's; the
    /// backup's other nodes are marked down as any silent node is, and their tasks run again.
    pub(super) fn restore(&mut self, restored: &ClusterState) -> Response {
        let registered = std::mem::take(&mut self.nodes);
        if *self != ClusterState::default() {
            self.nodes = registered;
            return Response::rejected("a backup is restored only into a new, empty cluster");
        }
        *self = restored.clone();
        self.nodes.extend(registered);
        AccessChanged.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn a_restore_replaces_an_empty_state_only() {
        let restored = ClusterState {
            next_run: 41,
            ..Default::default()
        };
        let mut fresh = ClusterState::default();
        assert_eq!(
            fresh.apply(&Command::Restore {
                state: Box::new(restored.clone())
            }),
            AccessChanged.into()
        );
        assert_eq!(fresh, restored);
        assert!(matches!(
            fresh.apply(&Command::Restore {
                state: Box::new(restored)
            }),
            Response::Rejected { .. }
        ));
    }
}
