//! Docker for the end-to-end tests: whether to run or skip, the base image the tests run
//! their containers in, a real registry process, and the containers an agent owns.
//!
//! - [`docker_or_skip`]: a test that needs Docker calls it first. With Docker it returns
//!   true. Without, it fails the test when `KILN_REQUIRE_DOCKER=1` (CI sets it), and
//!   otherwise says loudly that the test is skipped and returns false.
//! - [`base_image`]: `kiln-test-base:busybox`, made here, idempotently, by `docker import` of
//!   a rootfs holding Debian's static busybox (installed with apt-get when missing), as
//!   `deploy/build-local-image.sh` does: no registry is needed to get it.
//! - [`Registry`]: Debian's `docker-registry` (distribution 2.8, installed with apt-get when
//!   missing) on 127.0.0.1 with its storage in a temp dir, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image the container tests run in.
pub const BASE_IMAGE: &str = "kiln-test-base:busybox";

/// Is a Docker daemon answering?
pub fn docker_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the test can use Docker; see the module notes for what happens otherwise.
pub fn docker_or_skip(test: &str) -> bool {
    if docker_answers() {
        return true;
    }
    if std::env::var("KILN_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{test}: KILN_REQUIRE_DOCKER=1 but no Docker daemon answers `docker version`");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: no Docker daemon answers `docker version` (set KILN_REQUIRE_DOCKER=1 to make this a failure) !!!!!\n"
    );
    false
}

/// Runs a command, panicking with its output when it fails; returns its stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs a Debian package unless `check` already exists. Tests running at once wait for
/// each other on dpkg's lock rather than fail.
pub fn apt_install(package: &str, check: &Path) {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "-qq"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    if check.exists() || apt(&install) && check.exists() {
        return;
    }
    // No package lists yet (a fresh machine): fetch them once, then try again.
    apt(&["update"]);
    assert!(apt(&install), "apt-get install {package} failed");
    assert!(
        check.exists(),
        "{} missing after installing {package}",
        check.display()
    );
}

/// Makes [`BASE_IMAGE`] if it is not there yet, and returns its name.
pub fn base_image() -> &'static str {
    let exists = || {
        Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists() {
        return BASE_IMAGE;
    }
    apt_install("busybox-static", Path::new("/bin/busybox"));
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("rootfs");
    for d in ["bin", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in sh("/bin/busybox", &["--list"]).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("applet link");
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    let tar = dir.path().join("rootfs.tar");
    sh(
        "tar",
        &[
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
    );
    // Two tests may get here at once: each import is complete, the tag ends on one of them.
    sh(
        "docker",
        &[
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.display().to_string(),
            BASE_IMAGE,
        ],
    );
    BASE_IMAGE
}

/// The instance id an agent labels its containers with (its data dir's `agent-instance`).
pub fn agent_instance(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("agent-instance"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Ids of the containers (running or not) whose `label` is `value`.
pub fn containers_with(label: &str, value: &str) -> Vec<String> {
    let filter = format!("label={label}={value}");
    let args = ["ps", "-aq", "--no-trunc", "--filter", filter.as_str()];
    // `docker ps` fails now and then with "No such container" when a container is removed
    // while it lists them (other tests remove theirs all the time): ask again.
    for _ in 0..10 {
        let out = Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sh("docker", &args).lines().map(str::to_string).collect()
}

/// Force-removes every container of an agent instance (test clean-up).
pub fn remove_containers(instance: &str) {
    for id in containers_with("kiln.agent", instance) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker inspect` of one object, as JSON, if it (still) exists.
pub fn try_inspect(id: &str) -> Option<serde_json::Value> {
    let out = Command::new("docker")
        .args(["inspect", id])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0].clone())
}

/// `docker inspect` of one object, as JSON.
pub fn inspect(id: &str) -> serde_json::Value {
    let out = sh("docker", &["inspect", id]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0].clone()
}

/// A real OCI distribution registry on 127.0.0.1, killed on drop.
pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start() -> Registry {
        let program = PathBuf::from("/usr/bin/docker-registry");
        apt_install("docker-registry", &program);
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("temp dir");
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(&program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Registry { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while registry
            .get("/v2/", &[])
            .is_none_or(|(status, _)| status != 200)
        {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A plain HTTP/1.0 request; (status, headers) of the answer.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("HEAD {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, out))
    }

    /// The digest the registry holds for `repo:tag` (its `Docker-Content-Digest`).
    pub fn manifest_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let accept = "application/vnd.docker.distribution.manifest.v2+json";
        let (status, head) = self.get(
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", accept)],
        )?;
        if status != 200 {
            return None;
        }
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
