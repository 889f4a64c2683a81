//! The harness for kiln's end-to-end tests: it starts the real `kiln-coordinator` and
//! `kiln-agent` binaries as separate processes on 127.0.0.1 with free ports and temp data
//! dirs, drives them with the real `kiln` binary, and kills them all when dropped.
//!
//! Readiness is awaited against a deadline while checking that the children are alive, so
//! a crash fails the test at once with its log instead of timing out. On failure the temp dir
//! is kept and its path printed: every process's output is there.
//!
//! Every cluster speaks TLS with a CA of its own, made with the real `kiln tls` commands:
//! each coordinator, agent and gateway has its certificate, and the `kiln` the tests run is
//! `client/admin` (see [`Cluster::tls`]).
//!
//! [`docker`] holds what the container tests need: skip-or-fail without Docker, the base
//! image, a real registry. A dropped cluster also removes every container its agents own.

pub mod docker;
pub mod git;
pub mod http;
pub mod services;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where cargo put the binaries: beside the running executable (a benchmark in
/// `target/release/`) or beside the `deps/` folder a test runs from.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe dir");
    let candidates = [
        here.join(name),
        here.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} is missing beside {}: build the binaries first (`cargo build --workspace --bins`; scripts/test does it)",
            here.display()
        )
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Options for a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub coordinators: usize,
    /// Extra flags for every coordinator.
    pub coordinator_args: Vec<String>,
    pub agents: usize,
    pub node_grace_ms: u64,
    pub heartbeat_ms: u64,
    /// CPU given to each agent (e.g. "4").
    pub agent_cpu: String,
    /// Extra flags for every agent (e.g. `--registry`).
    pub agent_args: Vec<String>,
    /// Plaintext and no authentication (`--insecure`): only for a benchmark whose simulated
    /// agents cannot each hold a certificate.
    pub insecure: bool,
    /// A backup (`kiln snapshot save`) the first coordinator is made from, with
    /// `kiln snapshot restore` into its data dir before it starts.
    pub restore_from: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            coordinators: 3,
            coordinator_args: Vec::new(),
            agents: 2,
            node_grace_ms: 10_000,
            heartbeat_ms: 250,
            agent_cpu: "4".into(),
            agent_args: Vec::new(),
            insecure: false,
            restore_from: None,
        }
    }
}

/// One child process, restartable with the same arguments.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Proc {
    fn spawn(name: &str, program: PathBuf, args: Vec<String>, dir: &Path) -> Proc {
        let mut p = Proc {
            name: name.into(),
            program,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
            env: Vec::new(),
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("KILN_E2E_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// CPU seconds used so far (user + system) and resident memory in bytes, from /proc.
    pub fn usage(&self) -> Option<(f64, u64)> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((ticks / 100.0, rss_kb * 1024))
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("process is running")
    }

    /// Forgets a child that was killed from outside (and reaps it).
    pub fn reap_if_exited(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(_)) = c.try_wait()
        {
            self.child = None;
        }
    }

    fn check_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{} exited with {status}; its log:\n{log}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Coordinator {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub proc: Proc,
}

impl Coordinator {
    pub fn proc_pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn reap_if_exited(&mut self) {
        self.proc.reap_if_exited();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Where the cluster's CA and certificates are (`kiln tls init` / `issue`).
    pub tls_dir: PathBuf,
    pub coordinators: Vec<Coordinator>,
    pub agents: Vec<Proc>,
    /// `kiln gateway` processes, with their HTTP addresses.
    pub gateways: Vec<(Proc, String)>,
    node_grace_ms: u64,
    heartbeat_ms: u64,
    agent_args: Vec<String>,
    insecure: bool,
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kiln-e2e-")
            .tempdir()
            .expect("temp dir");
        let tls_dir = dir.path().join("tls");
        tls_init(&tls_dir);
        let mut cluster = Cluster {
            tls_dir,
            dir,
            coordinators: Vec::new(),
            agents: Vec::new(),
            gateways: Vec::new(),
            node_grace_ms: opts.node_grace_ms,
            heartbeat_ms: opts.heartbeat_ms,
            agent_args: opts.agent_args.clone(),
            insecure: opts.insecure,
        };
        for i in 1..=opts.coordinators as u64 {
            let (grpc, http) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let mut args = vec![
                "--id".into(),
                i.to_string(),
                "--listen".into(),
                grpc.clone(),
                "--http".into(),
                http.clone(),
                "--data-dir".into(),
                cluster
                    .dir
                    .path()
                    .join(format!("c{i}"))
                    .display()
                    .to_string(),
                "--node-grace-ms".into(),
                opts.node_grace_ms.to_string(),
                "--heartbeat-ms".into(),
                opts.heartbeat_ms.to_string(),
            ];
            args.extend(opts.coordinator_args.iter().cloned());
            args.extend(cluster.tls_args("coordinator", &i.to_string()));
            args.extend(cluster.secrets_args());
            if let (1, Some(backup)) = (i, &opts.restore_from) {
                let data = cluster.dir.path().join("c1");
                let out = Command::new(bin("kiln"))
                    .args(["snapshot", "restore"])
                    .arg(backup)
                    .arg("--data-dir")
                    .arg(&data)
                    .output()
                    .expect("kiln snapshot restore");
                assert!(
                    out.status.success(),
                    "kiln snapshot restore: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if i == 1 {
                args.push("--bootstrap".into());
            } else {
                args.push("--join".into());
                args.push(cluster.coordinators[0].grpc.clone());
            }
            if !cluster.insecure {
                http::trust(&http, &cluster.tls_dir.join("ca.pem"));
            }
            let proc = Proc::spawn(
                &format!("coordinator-{i}"),
                bin("kiln-coordinator"),
                args,
                cluster.dir.path(),
            );
            cluster.coordinators.push(Coordinator {
                id: i,
                grpc,
                http,
                proc,
            });
            if i == 1 {
                cluster.wait_for(
                    "the first coordinator to lead",
                    Duration::from_secs(20),
                    |c| c.leader().is_some(),
                );
            }
        }
        let n = opts.coordinators;
        cluster.wait_for("every coordinator to join", Duration::from_secs(30), |c| {
            c.cluster_status().is_some_and(|s| {
                s["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().filter(|m| m["voter"] == true).count() == n)
            })
        });
        for i in 1..=opts.agents {
            cluster.add_agent(&format!("agent-{i}"), &opts.agent_cpu);
        }
        let want = opts.agents;
        cluster.wait_for("every agent to be ready", Duration::from_secs(30), |c| {
            c.ready_nodes().len() == want
        });
        cluster
    }

    /// Starts one more coordinator with an empty data dir and no `--join`: it waits to be
    /// added with `kiln cluster join`.
    pub fn add_empty_coordinator(&mut self, id: u64) {
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut args = vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            grpc.clone(),
            "--http".into(),
            http.clone(),
            "--data-dir".into(),
            self.dir.path().join(format!("c{id}")).display().to_string(),
            "--node-grace-ms".into(),
            self.node_grace_ms.to_string(),
            "--heartbeat-ms".into(),
            self.heartbeat_ms.to_string(),
        ];
        args.extend(self.tls_args("coordinator", &id.to_string()));
        args.extend(self.secrets_args());
        if !self.insecure {
            http::trust(&http, &self.tls_dir.join("ca.pem"));
        }
        let proc = Proc::spawn(
            &format!("coordinator-{id}"),
            bin("kiln-coordinator"),
            args,
            self.dir.path(),
        );
        self.coordinators.push(Coordinator {
            id,
            grpc,
            http,
            proc,
        });
    }

    pub fn add_agent(&mut self, node_id: &str, cpu: &str) {
        self.add_agent_with(node_id, cpu, &[], &[]);
    }

    /// An agent with extra flags (beside the cluster's `agent_args`) and environment.
    pub fn add_agent_with(
        &mut self,
        node_id: &str,
        cpu: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(self.agent_args.iter().cloned());
        args.extend(self.tls_args("agent", node_id));
        args.extend([
            "--node-id".into(),
            node_id.into(),
            "--coordinators".into(),
            self.addrs(),
            "--data-dir".into(),
            self.dir.path().join(node_id).display().to_string(),
            "--cpu".into(),
            cpu.into(),
            "--memory".into(),
            "8Gi".into(),
        ]);
        let mut proc = Proc {
            name: node_id.into(),
            program: bin("kiln-agent"),
            args,
            log: self.dir.path().join(format!("{node_id}.log")),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        proc.start();
        self.agents.push(proc);
    }

    /// Starts a `kiln gateway` on a free port and waits until it accepts connections;
    /// returns its HTTP address.
    pub fn start_gateway(&mut self) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let name = format!("gateway-{}", self.gateways.len() + 1);
        let mut args = self.tls_args("gateway", &name);
        args.extend([
            "--addr".into(),
            self.addrs(),
            "gateway".into(),
            "--listen".into(),
            addr.clone(),
            "--hold-secs".into(),
            "20".into(),
        ]);
        let proc = Proc::spawn(&name, bin("kiln"), args, self.dir.path());
        self.gateways.push((proc, addr.clone()));
        let target = addr.clone();
        self.wait_for(
            "the gateway to listen",
            Duration::from_secs(20),
            move |_| std::net::TcpStream::connect(&target).is_ok(),
        );
        addr
    }

    /// An agent's data dir.
    pub fn agent_dir(&self, node_id: &str) -> PathBuf {
        self.dir.path().join(node_id)
    }

    /// Every coordinator's gRPC address, comma-separated, as `KILN_ADDR` takes them.
    pub fn addrs(&self) -> String {
        self.coordinators
            .iter()
            .map(|c| c.grpc.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--ca --cert --key` for the holder of a certificate issued (once) for `role/name`.
    pub fn tls_args(&self, role: &str, name: &str) -> Vec<String> {
        if self.insecure {
            return vec!["--insecure".into()];
        }
        let (ca, cert, key) = self.tls(role, name);
        vec![
            "--ca".into(),
            ca.display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]
    }

    /// `--secrets-key` for a coordinator: the key `kiln tls init` wrote.
    pub fn secrets_args(&self) -> Vec<String> {
        if self.insecure {
            return Vec::new();
        }
        vec![
            "--secrets-key".into(),
            self.tls_dir.join("secrets.key").display().to_string(),
        ]
    }

    /// The CA, certificate and key of `role/name`, issued with `kiln tls issue` if new.
    pub fn tls(&self, role: &str, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        tls_issue(&self.tls_dir, role, name)
    }

    /// The same, as kiln-api's TLS files (for a test's own gRPC client).
    pub fn tls_files(&self, role: &str, name: &str) -> kiln_api::pki::TlsFiles {
        let (ca, cert, key) = self.tls(role, name);
        kiln_api::pki::TlsFiles {
            ca,
            cert: Some(cert),
            key: Some(key),
        }
    }

    /// Runs the real `kiln` CLI against the cluster, as `client/admin`.
    pub fn kiln(&self, args: &[&str]) -> Output {
        if self.insecure {
            let mut all = vec!["--insecure"];
            all.extend_from_slice(args);
            return self.kiln_with(&all, &[]);
        }
        let (ca, cert, key) = self.tls("client", "admin");
        self.kiln_with(
            args,
            &[
                ("KILN_CA", ca.display().to_string()),
                ("KILN_CERT", cert.display().to_string()),
                ("KILN_KEY", key.display().to_string()),
            ],
        )
    }

    /// Runs `kiln` with only the CA and this token: a person, not an operator.
    pub fn kiln_token(&self, token: &str, args: &[&str]) -> Output {
        self.kiln_with(
            args,
            &[
                ("KILN_CA", self.tls_dir.join("ca.pem").display().to_string()),
                ("KILN_TOKEN", token.to_string()),
            ],
        )
    }

    /// Runs `kiln` with exactly these credentials in its environment.
    pub fn kiln_with(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut command = Command::new(bin("kiln"));
        command
            .args(args)
            .env("KILN_ADDR", self.addrs())
            .env_remove("RUST_LOG")
            .env_remove("KILN_CA")
            .env_remove("KILN_CERT")
            .env_remove("KILN_KEY")
            .env_remove("KILN_TOKEN")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null());
        command.output().expect("running kiln")
    }

    /// A `kiln` command as `client/admin` (or `--insecure`), to spawn or run as the caller
    /// likes (a follower in the background, one coordinator with `--addr`).
    pub fn kiln_command(&self) -> Command {
        let mut command = Command::new(bin("kiln"));
        command
            .env("KILN_ADDR", self.addrs())
            .env_remove("RUST_LOG");
        if self.insecure {
            command.arg("--insecure");
        } else {
            let (ca, cert, key) = self.tls("client", "admin");
            command
                .env("KILN_CA", ca)
                .env("KILN_CERT", cert)
                .env("KILN_KEY", key)
                .env_remove("KILN_TOKEN");
        }
        command
    }

    /// Runs `kiln ... --json` and parses its output; panics with stderr on failure.
    pub fn kiln_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.kiln(&all);
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kiln {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn cluster_status(&self) -> Option<Value> {
        let out = self.kiln(&["cluster", "status", "--json", "--wait", "1"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The leader's index in `coordinators`, if one is elected and reachable.
    pub fn leader(&self) -> Option<usize> {
        let s = self.cluster_status()?;
        let id = s["leader_id"].as_u64().filter(|id| *id != 0)?;
        self.coordinators
            .iter()
            .position(|c| c.id == id && c.proc.is_running())
    }

    pub fn ready_nodes(&self) -> Vec<String> {
        let out = self.kiln(&["nodes", "--json", "--wait", "1"]);
        let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        nodes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["status"] == "ready")
                    .filter_map(|n| n["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn run_status(&self, run: &str) -> Value {
        self.kiln_json(&["status", run])
    }

    /// Polls `check` until it holds, failing fast if a child died.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            for c in &mut self.coordinators {
                c.proc.check_alive();
            }
            for a in &mut self.agents {
                a.check_alive();
            }
            if check(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a file into the cluster's temp dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path.display().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill();
        }
        for (g, _) in &mut self.gateways {
            g.kill();
        }
        for c in &mut self.coordinators {
            c.proc.kill();
        }
        // Process tasks outlive a killed agent (they run in their own process groups, so a
        // restarted agent finds them): end every process still working in this cluster's
        // directories, so that no test leaves a replica or a stage behind.
        kill_processes_in(self.dir.path());
        // Containers outlive a killed agent (by design): remove the ones this cluster made.
        for a in &self.agents {
            if let Some(instance) = docker::agent_instance(&self.agent_dir(&a.name))
                && docker::docker_answers()
            {
                docker::remove_containers(&instance);
            }
        }
        if std::thread::panicking() {
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("kiln e2e: logs and data kept in {}", kept.display());
        }
    }
}

/// Makes a cluster CA in `dir` with `kiln tls init`.
pub fn tls_init(dir: &Path) {
    let out = Command::new(bin("kiln"))
        .args(["tls", "init"])
        .arg(dir)
        .output()
        .expect("running kiln tls init");
    assert!(
        out.status.success(),
        "kiln tls init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA, certificate and key of `role/name` in `dir`, issued with `kiln tls issue` if new.
pub fn tls_issue(dir: &Path, role: &str, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let cert = dir.join(format!("{role}-{name}.pem"));
    let key = dir.join(format!("{role}-{name}.key"));
    if !cert.is_file() {
        let out = Command::new(bin("kiln"))
            .args(["tls", "issue", role, name, "--dir"])
            .arg(dir)
            .output()
            .expect("running kiln tls issue");
        assert!(
            out.status.success(),
            "kiln tls issue {role} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (dir.join("ca.pem"), cert, key)
}

/// SIGKILL to every process whose working directory is inside `dir`.
pub fn kill_processes_in(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stage named `name` in a run's JSON.
pub fn stage<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {run}"))
}
