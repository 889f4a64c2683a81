//! GPU scheduling end to end, with simulated GPUs fed through the same interface as NVML:
//! whole GPUs land on the GPU agent with the right CUDA_VISIBLE_DEVICES, two 20 GiB shares
//! share one 80 GB GPU, a request that cannot fit waits with its reason and is placed once
//! room frees, and an impossible share is refused at submission.

use std::time::Duration;

use kiln_e2e::{Cluster, Options, stage};

fn start() -> Cluster {
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 0,
        ..Default::default()
    });
    cluster.add_agent("cpu-1", "4");
    cluster.add_agent_with(
        "gpu-1",
        "8",
        &["--simulate-gpus", "2xH100-80GB,nvlink=0-1"],
        &[],
    );
    cluster.wait_for("both agents", Duration::from_secs(20), |c| {
        c.ready_nodes().len() == 2
    });
    cluster
}

fn run_ok(cluster: &Cluster, name: &str, yaml: &str) -> serde_json::Value {
    let file = cluster.write(name, yaml);
    let out = cluster.kiln(&["run", &file, "--follow", "--json"]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn gpu_stages_land_on_gpus_and_wait_for_room() {
    let cluster = start();

    // The GPU agent's inventory is visible, labelled simulated.
    let nodes = cluster.kiln_json(&["nodes"]);
    let gpu_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "gpu-1")
        .unwrap();
    assert_eq!(gpu_node["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(gpu_node["gpus"][0]["simulated"], true);
    assert_eq!(gpu_node["gpus"][0]["nvlink_peers"], serde_json::json!([1]));

    // Whole GPUs: the stage sees exactly the GPUs it holds; CPU work stays off the GPU node.
    let run = run_ok(
        &cluster,
        "whole.yaml",
        "name: whole\nstages:\n  - name: train\n    command: echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES\"\n    resources: { gpus: 2, gpu_model: \"*H100*\" }\n  - name: lint\n    command: echo lint\n",
    );
    let train = stage(&run, "train");
    assert_eq!(train["node"], "gpu-1");
    assert_eq!(stage(&run, "lint")["node"], "cpu-1");
    let grants: Vec<u64> = train["attempts"][0]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["index"].as_u64().unwrap())
        .collect();
    assert_eq!(grants, vec![0, 1]);
    let logs = cluster.kiln(&["logs", run["id"].as_str().unwrap(), "train"]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout).trim(),
        "cuda=0,1 nvidia=0,1"
    );

    // Two 20 GiB shares run at once on one 80 GB GPU, each told its budget.
    let marker = cluster.dir.path().join("shares-go");
    let m = marker.display();
    let shares = format!(
        "name: shares\nstages:\n  - name: a\n    command: touch {m}.a; while [ ! -f {m}.b ]; do sleep 0.02; done; echo $KILN_GPU_MEMORY_BYTES\n    resources: {{ gpu_memory: 20GiB }}\n  - name: b\n    command: touch {m}.b; while [ ! -f {m}.a ]; do sleep 0.02; done; echo $KILN_GPU_MEMORY_BYTES\n    resources: {{ gpu_memory: 20GiB }}\n"
    );
    let run = run_ok(&cluster, "shares.yaml", &shares);
    let (a, b) = (stage(&run, "a"), stage(&run, "b"));
    assert_eq!(
        a["attempts"][0]["gpus"][0]["index"], b["attempts"][0]["gpus"][0]["index"],
        "both shares on one GPU"
    );
    assert_eq!(a["attempts"][0]["gpus"][0]["whole"], false);
    let budget = cluster.kiln(&["logs", run["id"].as_str().unwrap(), "a"]);
    assert_eq!(
        String::from_utf8_lossy(&budget.stdout).trim(),
        (20u64 << 30).to_string()
    );

    // Both GPUs held; a third ask waits with its reason, then runs once they are released.
    let release = cluster.dir.path().join("release");
    let hold = cluster.write(
        "hold.yaml",
        &format!("name: hold\nstages:\n  - name: big\n    command: while [ ! -f {} ]; do sleep 0.02; done\n    resources: {{ gpus: 2 }}\n", release.display()),
    );
    let out = cluster.kiln(&["run", &hold]);
    assert!(out.status.success());
    let hold_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut cluster = cluster;
    cluster.wait_for("the holder to run", Duration::from_secs(20), |c| {
        stage(&c.run_status(&hold_id), "big")["status"] == "running"
    });
    let out = cluster.kiln(&["run", &cluster.write("one.yaml", "name: one\nstages:\n  - name: small\n    command: echo ran\n    resources: { gpus: 1 }\n")]);
    let waiting_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    cluster.wait_for("a waiting reason", Duration::from_secs(20), |c| {
        stage(&c.run_status(&waiting_id), "small")["waiting_reason"]
            .as_str()
            .is_some_and(|r| r.contains("gpus exhausted"))
    });
    let text = cluster.kiln(&["status", &waiting_id]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("no node fits"),
        "kiln status must say why"
    );
    std::fs::write(&release, "").unwrap();
    cluster.wait_for("the waiting stage to run", Duration::from_secs(20), |c| {
        c.run_status(&waiting_id)["status"] == "succeeded"
    });
}

#[test]
fn an_impossible_share_is_refused_naming_the_field() {
    let cluster = start();
    let file = cluster.write(
        "huge.yaml",
        "name: huge\nstages:\n  - name: a\n    command: x\n    resources: { gpu_memory: 100GiB }\n",
    );
    let out = cluster.kiln(&["run", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "stages.a.resources.gpu_memory: 100.0 GiB is larger than any GPU in the cluster"
        ),
        "{err}"
    );
    for (yaml, field) in [
        (
            "resources: { gpus: -1 }",
            "stages.a.resources.gpus: -1 is out of range",
        ),
        (
            "resources: { gpu_memory: 0 }",
            "stages.a.resources.gpu_memory: 0 must be greater than zero",
        ),
        (
            "resources: { gpu_memory: 20 zettabytes }",
            "stages.a.resources.gpu_memory",
        ),
    ] {
        let file = cluster.write(
            "bad.yaml",
            &format!("name: bad\nstages:\n  - name: a\n    command: x\n    {yaml}\n"),
        );
        let out = cluster.kiln(&["run", &file]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{yaml}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        cluster.kiln_json(&["status"]).as_array().unwrap().len(),
        0,
        "nothing was submitted"
    );
}
