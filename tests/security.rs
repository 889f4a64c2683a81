//! Only the right party gets in: a matrix of real calls over real TLS to a real 3-coordinator
//! cluster, each refused with UNAUTHENTICATED or PERMISSION_DENIED, changing nothing, and
//! recorded in the audit log under who tried; and beside each, the right certificate or
//! token succeeding, so that the matrix cannot pass by refusing everything.

use std::time::{Duration, Instant};

use kiln_api::pb;
use kiln_api::pki::TlsFiles;
use kiln_e2e::{Cluster, Options, bin};
use serde_json::Value;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// A channel to `addr` holding `files` (a certificate, or just the CA).
fn channel(rt: &tokio::runtime::Runtime, addr: &str, files: &TlsFiles) -> Channel {
    let tls = files.client_config().expect("TLS settings");
    rt.block_on(async {
        kiln_api::pki::endpoint(addr, Some(&tls))
            .expect("endpoint")
            .connect()
            .await
            .expect("TLS connection")
    })
}

fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

fn refused(c: (Code, String), want: Code, words: &str, what: &str) {
    assert_eq!(c.0, want, "{what}: {}", c.1);
    assert!(c.1.contains(words), "{what}: {:?} lacks {words:?}", c.1);
}

fn admitted(c: (Code, String), what: &str) {
    assert!(
        !matches!(c.0, Code::Unauthenticated | Code::PermissionDenied),
        "{what} must get past authentication: {:?} {}",
        c.0,
        c.1
    );
}

fn voters(cluster: &Cluster) -> usize {
    cluster.kiln_json(&["cluster", "status"])["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["voter"] == true).count())
        .unwrap_or(0)
}

fn leave(rt: &tokio::runtime::Runtime, ch: &Channel, id: u64) -> (Code, String) {
    let mut c = pb::kiln_client::KilnClient::new(ch.clone());
    code(rt.block_on(c.leave_cluster(pb::LeaveClusterRequest { id })))
}

fn list_runs(rt: &tokio::runtime::Runtime, ch: &Channel) -> (Code, String) {
    let mut c = pb::kiln_client::KilnClient::new(ch.clone());
    code(rt.block_on(c.list_runs(pb::ListRunsRequest::default())))
}

fn raft_vote(rt: &tokio::runtime::Runtime, ch: &Channel) -> (Code, String) {
    let mut c = pb::raft_client::RaftClient::new(ch.clone());
    code(rt.block_on(c.vote(pb::RaftPayload {
        payload: b"{}".to_vec(),
    })))
}

/// Polls `check` until it holds (a certificate or token running out is a matter of time).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn audit(cluster: &Cluster) -> Vec<Value> {
    cluster
        .kiln_json(&["audit"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the audit log holds an entry by `principal` for `call` whose result has
/// `result` in it.
fn audited(cluster: &Cluster, principal: &str, call: &str, result: &str) {
    eventually(
        &format!("an audit entry: {principal} {call} {result}"),
        || {
            audit(cluster).iter().any(|e| {
                e["principal"]
                    .as_str()
                    .is_some_and(|p| p.contains(principal))
                    && e["call"].as_str().is_some_and(|c| c.ends_with(call))
                    && e["result"].as_str().is_some_and(|r| r.contains(result))
            })
        },
    );
}

fn token(cluster: &Cluster, name: &str, role: &str, expires: Option<&str>) -> String {
    let mut args = vec!["token", "create", name, "--role", role];
    if let Some(e) = expires {
        args.extend(["--expires", e]);
    }
    let out = cluster.kiln(&args);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn exit(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_door_is_closed_to_the_wrong_caller_and_open_to_the_right_one() {
    let cluster = Cluster::start(Options {
        coordinators: 3,
        agents: 1,
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addr = cluster.coordinators[0].grpc.clone();
    let ca_only = TlsFiles {
        ca: cluster.tls_dir.join("ca.pem"),
        cert: None,
        key: None,
    };

    // No certificate and no token: nothing but health.
    let anonymous = channel(&rt, &addr, &ca_only);
    refused(
        list_runs(&rt, &anonymous),
        Code::Unauthenticated,
        "no client certificate or token",
        "no certificate",
    );
    refused(
        leave(&rt, &anonymous, 3),
        Code::Unauthenticated,
        "no client certificate or token",
        "no certificate, LeaveCluster",
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(anonymous.clone());
    admitted(
        code(rt.block_on(health.check(tonic_health::pb::HealthCheckRequest::default()))),
        "health with no certificate",
    );
    audited(&cluster, "anonymous", "/LeaveCluster", "Unauthenticated");

    // A certificate from a CA that is not the cluster's.
    let foreign = cluster.dir.path().join("foreign");
    kiln_e2e::tls_init(&foreign);
    let (_, cert, key) = kiln_e2e::tls_issue(&foreign, "client", "mallory");
    let mallory = channel(
        &rt,
        &addr,
        &TlsFiles {
            ca: ca_only.ca.clone(),
            cert: Some(cert),
            key: Some(key),
        },
    );
    refused(
        leave(&rt, &mallory, 3),
        Code::Unauthenticated,
        "not issued by this cluster's CA",
        "foreign CA",
    );
    audited(
        &cluster,
        "client/mallory (unverified)",
        "/LeaveCluster",
        "Unauthenticated",
    );

    // An expired certificate from the right CA.
    let out = cluster.kiln(&[
        "tls",
        "issue",
        "client",
        "late",
        "--expires",
        "1s",
        "--dir",
        cluster.tls_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let late = channel(&rt, &addr, &cluster.tls_files("client", "late"));
    eventually("the certificate to expire", || {
        list_runs(&rt, &late).1.contains("expired")
    });
    refused(
        leave(&rt, &late, 3),
        Code::Unauthenticated,
        "it has expired",
        "expired certificate",
    );
    audited(
        &cluster,
        "client/late (unverified)",
        "/LeaveCluster",
        "expired",
    );

    // An agent certificate: its own stream only, never Raft, membership or client calls.
    let agent = channel(&rt, &addr, &cluster.tls_files("agent", "agent-1"));
    refused(
        raft_vote(&rt, &agent),
        Code::PermissionDenied,
        "coordinator certificate",
        "agent → Raft",
    );
    refused(
        leave(&rt, &agent, 3),
        Code::PermissionDenied,
        "role admin",
        "agent → LeaveCluster",
    );
    refused(
        list_runs(&rt, &agent),
        Code::PermissionDenied,
        "role read",
        "agent → ListRuns",
    );
    let mut as_agent = pb::kiln_client::KilnClient::new(agent.clone());
    refused(
        code(rt.block_on(as_agent.create_token(pb::CreateTokenRequest {
            name: "sneaky".into(),
            role: "admin".into(),
            expires_in_ms: 0,
        }))),
        Code::PermissionDenied,
        "role admin",
        "agent → CreateToken",
    );
    audited(
        &cluster,
        "agent/agent-1",
        "/CreateToken",
        "PermissionDenied",
    );
    assert_eq!(
        cluster.kiln_json(&["token", "list"]),
        serde_json::json!([]),
        "no token was made"
    );
    audited(
        &cluster,
        "agent/agent-1",
        "/LeaveCluster",
        "PermissionDenied",
    );

    // A client certificate: everything a person may do, but not Raft.
    let admin = channel(&rt, &addr, &cluster.tls_files("client", "admin"));
    refused(
        raft_vote(&rt, &admin),
        Code::PermissionDenied,
        "coordinator certificate",
        "client → Raft",
    );
    audited(&cluster, "client/admin", "/Vote", "PermissionDenied");
    admitted(list_runs(&rt, &admin), "client → ListRuns");
    // A coordinator's certificate gets to Raft itself (which then judges the payload).
    let peer = channel(&rt, &addr, &cluster.tls_files("coordinator", "2"));
    admitted(raft_vote(&rt, &peer), "coordinator → Raft");
    assert_eq!(voters(&cluster), 3, "nobody removed a voter");

    // An agent certificate for node A registering as node B.
    // The agent stream is the leader's.
    let leader = cluster.coordinators[cluster.leader().expect("a leader")]
        .grpc
        .clone();
    let a = channel(&rt, &leader, &cluster.tls_files("agent", "node-a"));
    let register = |node: &str| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                node_id: node.into(),
                drivers: vec!["process".into()],
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                version: "test".into(),
                ..Default::default()
            })),
        })
        .expect("send");
        let mut c = pb::agent_service_client::AgentServiceClient::new(a.clone());
        let r = rt.block_on(c.session(UnboundedReceiverStream::new(rx)));
        (code(r.map(|_| ())), tx)
    };
    let (as_b, _tx) = register("node-b");
    refused(
        as_b,
        Code::PermissionDenied,
        "may not register as node \"node-b\"",
        "A as B",
    );
    audited(&cluster, "agent/node-a", "/Session", "PermissionDenied");
    let nodes = cluster.kiln_json(&["nodes"]);
    assert!(
        !nodes.to_string().contains("node-b"),
        "node-b was never registered: {nodes}"
    );
    let (as_a, _keep) = register("node-a");
    admitted(as_a, "A as A");

    // Tokens: a read token reads and may not deploy or run; a submit token runs.
    let reader = token(&cluster, "reader", "read", None);
    assert!(reader.starts_with("kiln_"), "{reader}");
    // The HTTP port is HTTPS with the same CA; /metrics needs the read role, probes not.
    let http = cluster.coordinators[0].http.clone();
    let get = |headers: &[(&str, &str)], path: &str| {
        kiln_e2e::http::request_with_headers(&http, "GET", path, headers, b"")
    };
    let bare = get(&[], "/metrics");
    assert_eq!(bare.status, 401, "{}", bare.body);
    assert!(
        bare.body.contains("no client certificate or token"),
        "{}",
        bare.body
    );
    let bearer = format!("Bearer {reader}");
    let scraped = get(&[("Authorization", bearer.as_str())], "/metrics");
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    assert!(scraped.body.contains("kiln_raft_term"), "{}", scraped.body);
    assert_eq!(get(&[], "/healthz").status, 200);
    audited(&cluster, "anonymous", "/metrics", "Unauthenticated");
    let plain = std::net::TcpStream::connect(&http).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(out)
    });
    assert!(
        !String::from_utf8_lossy(&plain.unwrap_or_default()).contains("200 OK"),
        "plaintext HTTP is not served"
    );
    let listed = cluster.kiln_token(&reader, &["status", "--json"]);
    assert!(listed.status.success(), "{}", exit(&listed).1);
    let service = cluster.write(
        "svc.yaml",
        "name: web\ncommand: sleep 1000\nreplicas: 1\nhealth: { exec: \"true\" }\n",
    );
    let (code_, said) = exit(&cluster.kiln_token(&reader, &["deploy", &service]));
    assert_eq!(code_, Some(6), "{said}");
    assert!(said.contains("needs the role deploy or above"), "{said}");
    let pipeline = cluster.write(
        "p.yaml",
        "name: p\nstages:\n  - name: a\n    command: \"true\"\n",
    );
    let (code_, said) = exit(&cluster.kiln_token(&reader, &["run", &pipeline]));
    assert_eq!(code_, Some(6), "{said}");
    assert_eq!(
        cluster.kiln_json(&["services"]),
        serde_json::json!([]),
        "nothing deployed"
    );
    assert_eq!(
        cluster.kiln_json(&["status"]),
        serde_json::json!([]),
        "no run made"
    );
    audited(&cluster, "token/reader", "/Deploy", "PermissionDenied");
    let submitter = token(&cluster, "ci", "submit", None);
    let ran = cluster.kiln_token(&submitter, &["run", &pipeline]);
    assert!(ran.status.success(), "{}", exit(&ran).1);
    audited(&cluster, "token/ci", "/SubmitRun", "ok");
    let deployer = token(&cluster, "release", "deploy", None);
    let deployed = cluster.kiln_token(&deployer, &["deploy", &service]);
    assert!(deployed.status.success(), "{}", exit(&deployed).1);
    audited(&cluster, "token/release", "/Deploy", "ok");

    // A revoked token, and one used after it expired.
    let gone = token(&cluster, "gone", "admin", None);
    assert!(
        cluster
            .kiln_token(&gone, &["token", "list"])
            .status
            .success()
    );
    let revoked = cluster.kiln(&["token", "revoke", "gone"]);
    assert!(revoked.status.success(), "{}", exit(&revoked).1);
    let (code_, said) = exit(&cluster.kiln_token(&gone, &["token", "list"]));
    assert_eq!(code_, Some(6), "{said}");
    assert!(said.contains("token revoked"), "{said}");
    let brief = token(&cluster, "brief", "read", Some("1s"));
    eventually("the token to expire", || {
        exit(&cluster.kiln_token(&brief, &["status"]))
            .1
            .contains("token expired")
    });
    audited(&cluster, "token/gone", "/ListTokens", "token revoked");
    audited(&cluster, "token/brief", "/ListRuns", "token expired");

    // Only hashes are kept: no token's text is in any answer, nor in the state on disk.
    let tokens = cluster.kiln(&["token", "list", "--json"]);
    let shown = String::from_utf8_lossy(&tokens.stdout);
    for secret in [&reader, &submitter, &gone, &brief] {
        assert!(
            !shown.contains(secret.as_str()),
            "a token's text was listed"
        );
    }
    assert!(shown.contains("\"revoked_ms\""), "{shown}");

    // The admin certificate may do what the agent could not: remove a voter.
    admitted(leave(&rt, &admin, 3), "client → LeaveCluster");
    eventually("coordinator 3 to leave", || voters(&cluster) == 2);
    audited(&cluster, "client/admin", "/LeaveCluster", "ok");

    // Plaintext is refused off loopback, before anything is dialled.
    let out = std::process::Command::new(bin("kiln"))
        .args(["--insecure", "--addr", "10.1.2.3:7470", "status"])
        .output()
        .expect("kiln");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}
