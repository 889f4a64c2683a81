//! The Docker driver on real processes and a real Docker daemon: container stages succeed
//! and fail with their exit codes, carry their limits, report OOM kills; a cancelled run's
//! containers are stopped within the grace period; an agent killed with -9 and started again
//! adopts its running container and removes the ones whose task is gone; a node without
//! Docker does not offer the driver, and the stage says so.
//!
//! Tests that need Docker skip loudly without it, or fail when KILN_REQUIRE_DOCKER=1.

use std::time::{Duration, Instant};

use kiln_e2e::docker::{self, base_image, containers_with, docker_or_skip};
use kiln_e2e::{Cluster, Options, stage};

fn one_agent() -> Options {
    Options {
        coordinators: 1,
        agents: 1,
        ..Default::default()
    }
}

fn submit(cluster: &Cluster, name: &str, yaml: &str) -> String {
    let file = cluster.write(name, yaml);
    let out = cluster.kiln(&["run", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn finished(c: &Cluster, run: &str) -> bool {
    c.run_status(run)["finished_ms"].as_i64().unwrap_or(0) > 0
}

#[test]
fn container_stages_report_exit_codes_limits_and_oom_kills() {
    if !docker_or_skip("container_stages_report_exit_codes_limits_and_oom_kills") {
        return;
    }
    let image = base_image();
    let mut cluster = Cluster::start(one_agent());
    let run = submit(
        &cluster,
        "containers.yaml",
        &format!(
            "name: containers
stages:
  - name: ok
    image: {image}
    command: echo hello-from-$KILN_TASK_ID > out.txt; cat out.txt; test \"$PWD\" = /kiln/work
  - name: fails
    image: {image}
    command: [sh, -c, 'exit 3']
  - name: oom
    image: {image}
    command: dd if=/dev/zero of=/dev/null bs=64M count=1
    resources: {{ memory: 16Mi }}
  - name: limits
    image: {image}
    command: while [ ! -e release ]; do sleep 0.1; done
    resources: {{ cpu: 500m, memory: 48Mi }}
  - name: slow
    image: {image}
    command: sleep 60
    timeout: 1s
"
        ),
    );
    // While `limits` runs, its container shows the stage's reservation as its limits. (A
    // listed container can be gone by the time it is inspected: ask for a running one.)
    let mut info = serde_json::Value::Null;
    cluster.wait_for("the limits container", Duration::from_secs(60), |_| {
        info = containers_with("kiln.task", &format!("{run}/limits"))
            .iter()
            .filter_map(|id| docker::try_inspect(id))
            .find(|c| c["State"]["Running"] == true)
            .unwrap_or_default();
        !info.is_null()
    });
    let host = &info["HostConfig"];
    assert_eq!(host["Memory"], 48 << 20, "{host}");
    assert_eq!(host["MemorySwap"], 48 << 20, "no swap past the limit");
    assert_eq!(host["CpuPeriod"], 100_000);
    assert_eq!(host["CpuQuota"], 50_000, "500m is half of each period");
    let env: Vec<&str> = info["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        env.contains(&format!("KILN_TASK_ID={run}/limits").as_str()),
        "{env:?}"
    );
    assert!(
        env.contains(&"NVIDIA_VISIBLE_DEVICES=void"),
        "no GPUs, none visible: {env:?}"
    );
    let instance = docker::agent_instance(&cluster.agent_dir("agent-1")).expect("instance id");
    assert_eq!(info["Config"]["Labels"]["kiln.agent"], instance.as_str());
    std::fs::write(
        cluster
            .agent_dir("agent-1")
            .join(format!("tasks/{run}/limits/1/work/release")),
        "",
    )
    .unwrap();

    cluster.wait_for("the run to finish", Duration::from_secs(60), |c| {
        finished(c, &run)
    });
    let r = cluster.run_status(&run);
    assert_eq!(r["status"], "failed", "{r}");
    let ok = stage(&r, "ok");
    assert_eq!(
        (ok["status"].as_str(), ok["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(ok["image"], image);
    let fails = stage(&r, "fails");
    assert_eq!(fails["status"], "failed");
    assert_eq!(fails["exit_code"], 3);
    assert_eq!(fails["attempts"][0]["message"], "exited with code 3");
    let oom = stage(&r, "oom");
    assert_eq!(oom["status"], "failed");
    assert_eq!(oom["exit_code"], 137, "{oom}");
    let message = oom["attempts"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("out of memory: OOM-killed at its memory limit of 16Mi"),
        "{message}"
    );
    assert_eq!(stage(&r, "limits")["status"], "succeeded");
    let slow = stage(&r, "slow");
    assert_eq!(slow["status"], "failed");
    assert_eq!(slow["attempts"][0]["message"], "timed out", "{slow}");
    assert!(slow["exit_code"].is_null());

    // Output comes back like a process task's; the work dir was the task's own.
    let logs = cluster.kiln(&["logs", &run, "ok"]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        format!("hello-from-{run}/ok\n")
    );
    let out = cluster
        .agent_dir("agent-1")
        .join(format!("tasks/{run}/ok/1/work/out.txt"));
    assert!(out.is_file(), "the work dir is mounted into the container");
    assert!(
        containers_with("kiln.agent", &instance).is_empty(),
        "finished containers are removed"
    );
}

#[test]
fn cancelling_a_run_stops_its_containers_within_the_grace_period() {
    if !docker_or_skip("cancelling_a_run_stops_its_containers_within_the_grace_period") {
        return;
    }
    let image = base_image();
    let mut cluster = Cluster::start(one_agent());
    // PID 1 ignores SIGTERM here, so only the SIGKILL after the grace period stops it.
    let run = submit(
        &cluster,
        "stubborn.yaml",
        &format!(
            "name: stubborn\nstages:\n  - name: hold\n    image: {image}\n    command: trap '' TERM; while true; do sleep 1; done\n"
        ),
    );
    cluster.wait_for("the container to run", Duration::from_secs(60), |c| {
        stage(&c.run_status(&run), "hold")["status"] == "running"
    });
    assert_eq!(
        containers_with("kiln.task", &format!("{run}/hold")).len(),
        1
    );
    let cancelled = Instant::now();
    let out = cluster.kiln(&["cancel", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.wait_for("the container to be gone", Duration::from_secs(15), |_| {
        containers_with("kiln.task", &format!("{run}/hold")).is_empty()
    });
    let took = cancelled.elapsed();
    // 3 s of grace, then SIGKILL and removal.
    assert!(
        took >= Duration::from_millis(2500),
        "stopped before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "not stopped within the grace period: {took:?}"
    );
    cluster.wait_for("the run to settle", Duration::from_secs(10), |c| {
        finished(c, &run)
    });
    let r = cluster.run_status(&run);
    assert_eq!(r["status"], "cancelled");
    assert_eq!(stage(&r, "hold")["status"], "cancelled");
}

#[test]
fn a_restarted_agent_adopts_its_container_and_removes_orphans() {
    if !docker_or_skip("a_restarted_agent_adopts_its_container_and_removes_orphans") {
        return;
    }
    let image = base_image();
    let mut cluster = Cluster::start(one_agent());
    let dir = cluster.agent_dir("agent-1");
    let run = submit(
        &cluster,
        "adopt.yaml",
        &format!(
            "name: adopt\nstages:\n  - name: work\n    image: {image}\n    command: echo started; while [ ! -e release ]; do sleep 0.1; done; echo done\n"
        ),
    );
    cluster.wait_for("the container to run", Duration::from_secs(60), |c| {
        stage(&c.run_status(&run), "work")["status"] == "running"
    });
    cluster.agents[0].kill();
    let instance = docker::agent_instance(&dir).expect("instance id");
    // A container this agent owns whose task does not exist (its run was never here).
    let orphan = docker::sh(
        "docker",
        &[
            "run",
            "-d",
            "--label",
            &format!("kiln.agent={instance}"),
            "--label",
            "kiln.task=run-999/ghost",
            "--label",
            "kiln.attempt=1",
            image,
            "sleep",
            "300",
        ],
    )
    .trim()
    .to_string();
    let work = containers_with("kiln.task", &format!("{run}/work"));
    assert_eq!(work.len(), 1, "the task's container outlived its agent");

    cluster.agents[0].start();
    cluster.wait_for("the orphan to be removed", Duration::from_secs(30), |_| {
        !containers_with("kiln.agent", &instance).contains(&orphan)
    });
    assert_eq!(
        containers_with("kiln.task", &format!("{run}/work")),
        work,
        "adopted, not replaced"
    );
    std::fs::write(dir.join(format!("tasks/{run}/work/1/work/release")), "").unwrap();
    cluster.wait_for("the run to finish", Duration::from_secs(30), |c| {
        finished(c, &run)
    });
    let r = cluster.run_status(&run);
    assert_eq!(r["status"], "succeeded", "{r}");
    let w = stage(&r, "work");
    assert_eq!(
        w["attempts"].as_array().unwrap().len(),
        1,
        "one attempt, adopted: {w}"
    );
    assert_eq!(w["exit_code"], 0);
    let logs = cluster.kiln(&["logs", &run, "work"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "started\ndone\n");
    assert!(
        containers_with("kiln.agent", &instance).is_empty(),
        "orphans left: 0"
    );
}

#[test]
fn a_node_without_docker_does_not_offer_it_and_the_stage_says_why_it_waits() {
    // Needs no Docker: the agent is pointed at a socket where no daemon answers.
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        ..Default::default()
    });
    cluster.add_agent_with(
        "agent-1",
        "4",
        &[],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    cluster.wait_for("the agent", Duration::from_secs(30), |c| {
        c.ready_nodes().len() == 1
    });
    let nodes = cluster.kiln_json(&["nodes"]);
    assert_eq!(nodes[0]["drivers"], serde_json::json!(["process"]));
    let run = submit(
        &cluster,
        "needs-docker.yaml",
        "name: needs-docker\nstages:\n  - name: boxed\n    image: busybox\n    command: echo boxed\n  - name: plain\n    command: echo fine\n",
    );
    cluster.wait_for("the reason", Duration::from_secs(30), |c| {
        let r = c.run_status(&run);
        stage(&r, "plain")["status"] == "succeeded"
            && stage(&r, "boxed")["waiting_reason"]
                == "no node offers driver docker: 1 ready node offers process"
    });
    assert_eq!(
        stage(&cluster.run_status(&run), "boxed")["status"],
        "pending"
    );
}

#[test]
fn a_node_offers_docker_once_its_daemon_answers_and_the_waiting_stage_runs() {
    if !docker_or_skip("a_node_offers_docker_once_its_daemon_answers_and_the_waiting_stage_runs") {
        return;
    }
    let image = base_image();
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        ..Default::default()
    });
    // The agent looks for Docker at a socket that appears only later.
    let socket = cluster.dir.path().join("docker.sock");
    let host = format!("unix://{}", socket.display());
    cluster.add_agent_with("agent-1", "4", &[], &[("DOCKER_HOST", &host)]);
    cluster.wait_for("the agent", Duration::from_secs(30), |c| {
        c.ready_nodes().len() == 1
    });
    let run = submit(
        &cluster,
        "later.yaml",
        &format!(
            "name: later\nstages:\n  - name: boxed\n    image: {image}\n    command: echo boxed\n"
        ),
    );
    cluster.wait_for("the reason", Duration::from_secs(30), |c| {
        stage(&c.run_status(&run), "boxed")["waiting_reason"]
            == "no node offers driver docker: 1 ready node offers process"
    });
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    // Re-probed within drivers::PROBE_EVERY (10 s); the agent registers again.
    cluster.wait_for("docker to be offered", Duration::from_secs(30), |c| {
        c.kiln_json(&["nodes"])[0]["drivers"] == serde_json::json!(["process", "docker"])
    });
    cluster.wait_for("the stage to run", Duration::from_secs(30), |c| {
        finished(c, &run)
    });
    let r = cluster.run_status(&run);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(stage(&r, "boxed")["node"], "agent-1");
}
