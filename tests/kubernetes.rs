//! The Kubernetes manifests in deploy/kubernetes pass `kubernetes-validate --strict` (PyPI,
//! installed by `tests/support/kubernetes/setup.sh` into a venv under target/), and the same
//! check refuses a manifest with a misspelt field, so the pass means something.

use std::path::PathBuf;
use std::process::Command;

fn validator() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/kiln-e2e-cache/kubernetes-validate");
    let out = Command::new("bash")
        .arg(root.join("tests/support/kubernetes/setup.sh"))
        .arg(&venv)
        .output()
        .expect("running setup.sh");
    assert!(
        out.status.success(),
        "installing kubernetes-validate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv.join("bin/kubernetes-validate")
}

fn validate(tool: &PathBuf, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_kubernetes_manifests_are_valid_and_the_check_can_fail() {
    let tool = validator();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let manifests = [dir.join("coordinator.yaml"), dir.join("agent.yaml")];
    let (ok, said) = validate(&tool, &manifests);
    assert!(ok, "{said}");
    assert!(said.contains("statefulset/kiln-coordinator"), "{said}");
    assert!(said.contains("daemonset/kiln-agent"), "{said}");

    let broken = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&manifests[1]).unwrap();
    assert!(text.contains("imagePullPolicy"));
    let path = broken.path().join("agent.yaml");
    std::fs::write(&path, text.replacen("imagePullPolicy", "imagePulPolicy", 1)).unwrap();
    let (ok, said) = validate(&tool, &[path]);
    assert!(!ok, "a misspelt field must fail: {said}");
}
