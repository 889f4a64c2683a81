//! The agent protocol as the leader enforces it, spoken by a plain gRPC client in the place
//! of an agent: an event the leader cannot understand is refused — the session ends with
//! INVALID_ARGUMENT naming it, and it is not acknowledged — while the events before it are
//! committed and acknowledged.

use std::time::Duration;

use kiln_api::pb::{self, agent_message::Msg as Out, coordinator_message::Msg as In};
use kiln_e2e::{Cluster, Options, now_ms, stage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

fn event(seq: u64, a: &pb::Assignment, state: i32) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(Out::TaskEvent(pb::TaskEvent {
            seq,
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            state,
            exit_code: Some(0),
            at_ms: now_ms(),
            ..Default::default()
        })),
    }
}

#[test]
fn an_event_the_leader_cannot_understand_is_refused_not_acknowledged() {
    let cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        ..Default::default()
    });
    let addr = cluster.coordinators[0].grpc.clone();
    let tls = cluster.tls_files("agent", "fake");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut inbound = rt.block_on(async {
        tx.send(pb::AgentMessage {
            msg: Some(Out::Register(pb::Register {
                node_id: "fake".into(),
                drivers: vec!["process".into()],
                cpu_millis: 4_000,
                memory_bytes: 4 << 30,
                version: "test".into(),
                ..Default::default()
            })),
        })
        .expect("send");
        let tls = tls.client_config().expect("TLS settings");
        let channel = kiln_api::pki::endpoint(&addr, Some(&tls))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        client
            .session(UnboundedReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner()
    });
    let file = cluster.write(
        "one.yaml",
        "name: one\nstages:\n  - name: work\n    command: \"true\"\n",
    );
    let out = cluster.kiln(&["run", &file]);
    assert!(out.status.success(), "{out:?}");

    let next = |inbound: &mut tonic::Streaming<pb::CoordinatorMessage>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), inbound.message())
                .await
                .expect("the leader said something within 20 s")
        })
    };
    let assignment = loop {
        match next(&mut inbound) {
            Ok(Some(pb::CoordinatorMessage {
                msg: Some(In::Assign(a)),
            })) => break a,
            Ok(Some(_)) => continue,
            other => panic!("expected an assignment, got {other:?}"),
        }
    };
    // Running (understood), then an end whose state this coordinator does not know.
    tx.send(event(1, &assignment, pb::TaskState::Running.into()))
        .expect("send");
    tx.send(event(2, &assignment, 99)).expect("send");

    let mut acked = 0;
    let refusal = loop {
        match next(&mut inbound) {
            Ok(Some(pb::CoordinatorMessage {
                msg: Some(In::Ack(a)),
            })) => acked = acked.max(a.up_to_seq),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the session ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    assert!(
        refusal.message().contains("task event 2") && refusal.message().contains("state 99"),
        "the refusal names the event and why: {}",
        refusal.message()
    );
    assert_eq!(acked, 1, "only the understood event is acknowledged");

    let run = cluster.run_status("run-1");
    assert_eq!(
        stage(&run, "work")["status"],
        "running",
        "the running event applied, the unknown end did not: {run}"
    );
}
