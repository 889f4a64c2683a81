//! Task events on their way to the leader. Each gets a sequence number and stays here until
//! the leader acknowledges a sequence at least as high; after every reconnect all of them are
//! sent again (the leader ignores what it has already applied).

use std::collections::VecDeque;
use std::sync::Mutex;

use kiln_api::pb;
use tokio::sync::mpsc;

pub type Outbound = mpsc::UnboundedSender<pb::AgentMessage>;

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    unacked: VecDeque<pb::TaskEvent>,
    /// The current session's sender, if connected.
    current: Option<Outbound>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event and sends it if a session is up.
    pub fn emit(&self, mut event: pb::TaskEvent) {
        let mut inner = self.lock();
        inner.next_seq += 1;
        event.seq = inner.next_seq;
        if let Some(tx) = &inner.current {
            let _ = tx.send(event_message(event.clone()));
        }
        inner.unacked.push_back(event);
    }

    pub fn ack(&self, up_to: u64) {
        let mut inner = self.lock();
        while inner.unacked.front().is_some_and(|e| e.seq <= up_to) {
            inner.unacked.pop_front();
        }
    }

    /// Makes `tx` the current session and re-sends everything unacknowledged on it, in order.
    pub fn attach(&self, tx: Outbound) {
        let mut inner = self.lock();
        for e in &inner.unacked {
            let _ = tx.send(event_message(e.clone()));
        }
        inner.current = Some(tx);
    }

    pub fn detach(&self) {
        self.lock().current = None;
    }

    /// Sends a message on the current session, if any.
    pub fn send(&self, msg: pb::AgentMessage) -> bool {
        self.lock()
            .current
            .as_ref()
            .is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// (task id, attempt) of every unacknowledged event.
    pub fn pending_tasks(&self) -> Vec<(String, u32)> {
        self.lock()
            .unacked
            .iter()
            .map(|e| (e.task_id.clone(), e.attempt))
            .collect()
    }
}

fn event_message(e: pb::TaskEvent) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::TaskEvent(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task: &str) -> pb::TaskEvent {
        pb::TaskEvent {
            task_id: task.into(),
            attempt: 1,
            state: pb::TaskState::Running.into(),
            ..Default::default()
        }
    }

    #[test]
    fn unacknowledged_events_are_resent_in_order_on_attach() {
        let outbox = Outbox::default();
        outbox.emit(event("a"));
        outbox.emit(event("b"));
        outbox.emit(event("c"));
        outbox.ack(1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        outbox.attach(tx);
        let mut seen = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(pb::agent_message::Msg::TaskEvent(e)) = m.msg {
                seen.push((e.seq, e.task_id));
            }
        }
        assert_eq!(seen, vec![(2, "b".to_string()), (3, "c".to_string())]);
        outbox.ack(3);
        assert!(outbox.pending_tasks().is_empty());
    }
}
