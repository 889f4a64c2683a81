//! GPU passthrough for containers, checked without a GPU: the container the Docker driver
//! creates for an assignment with GPU indices asks the Engine for exactly those devices
//! (an `nvidia` device request) and sets `NVIDIA_VISIBLE_DEVICES` to them. Only created,
//! never started (there is no GPU here), then removed.

use kiln_api::pb;
use kiln_e2e::docker::{base_image, docker_or_skip, inspect};

#[test]
fn gpu_indices_become_a_device_request_and_visible_devices() {
    if !docker_or_skip("gpu_indices_become_a_device_request_and_visible_devices") {
        return;
    }
    let image = base_image();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let instance = format!("gpu-test-{}", std::process::id());
    let d = rt
        .block_on(kiln_agent::docker::DockerDriver::connect(&instance, None))
        .expect("docker");
    let a = pb::Assignment {
        task_id: "run-1/train".into(),
        attempt: 1,
        image: image.into(),
        shell: "nvidia-smi".into(),
        cpu_millis: 1000,
        memory_bytes: 64 << 20,
        gpu_indices: vec![0, 2],
        ..Default::default()
    };
    let id = rt
        .block_on(kiln_agent::docker::container::create(
            &d,
            &a,
            work.path(),
            0,
            None,
        ))
        .expect("created");
    let info = inspect(&id);
    rt.block_on(kiln_agent::docker::container::remove(&d, &id));

    let requests = &info["HostConfig"]["DeviceRequests"];
    assert_eq!(
        requests,
        &serde_json::json!([{
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["0", "2"],
            "Capabilities": [["gpu"]],
            "Options": null
        }]),
        "{requests}"
    );
    let env = info["Config"]["Env"].as_array().unwrap();
    assert!(
        env.contains(&serde_json::json!("NVIDIA_VISIBLE_DEVICES=0,2")),
        "{env:?}"
    );
    assert!(inspect_gone(&id), "the created container was removed");
}

fn inspect_gone(id: &str) -> bool {
    !std::process::Command::new("docker")
        .args(["inspect", id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
