//! `kiln-bench services`: a real cluster (1 coordinator, 2 agents, release binaries), the
//! example model server deployed as a service, and a real `kiln gateway` process.
//!
//! - **Gateway overhead**: `wrk` against one replica's `/healthz` directly, through the kiln
//!   gateway, and through nginx (`proxy_pass` with upstream keepalive, as
//!   `../shared/anchors/nginx.sh` sets it up) to the same replica, in the same run:
//!   requests/s and p50/p99 latency.
//! - **Rollback**: under steady load through the gateway, `Rollback` is called; the time
//!   from the call to the first request after which every answer comes from the target
//!   revision. Alternates between revisions 1 and 2.
//! - **Autoscaler reaction**: a service with `autoscale: concurrency, target 2` and 40 ms
//!   predictions; a step from no load to 8 concurrent clients; the time to the scale
//!   decision (`desired` rises) and to a new replica serving.
//!
//! It installs nginx and wrk from Debian when they are missing (no service started).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_api::pb::{self, kiln_client::KilnClient};
use kiln_e2e::http::{Answer, Load};
use kiln_e2e::{Cluster, Options, bin, free_port};
use tonic::transport::Channel;

pub struct Params {
    pub rollbacks: usize,
    pub scale_steps: usize,
    pub wrk_secs: u64,
}

const PREDICT: &str = r#"{"features":[3,10,2]}"#;

fn service(name: &str, weights: &str, extra: &str) -> String {
    let model = format!(
        "{}/../../examples/model-server/model/weights-{weights}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    format!(
        "name: {name}\ncommand: ADDR=127.0.0.1:$PORT exec {}\nenv: {{ MODEL_WEIGHTS: {model}{extra_env} }}\nreplicas: {replicas}\nresources: {{ cpu: 100m, memory: 64Mi }}\nhealth: {{ http: /ready, interval: 100ms }}\nupdate: {{ max_surge: 1, max_unavailable: 0, min_healthy_time: 300ms }}\n{extra}",
        bin("model-server").display(),
        extra_env = if extra.contains("autoscale") {
            ", INFERENCE_MS: \"40\""
        } else {
            ""
        },
        replicas = if extra.contains("autoscale") { 1 } else { 2 },
    )
}

pub fn run(rt: &tokio::runtime::Runtime, params: Params) {
    ensure_tools();
    println!(
        "kiln-bench services: 1 coordinator, 2 agents, kiln gateway, release binaries, the model server"
    );
    let mut cluster = Cluster::start(Options {
        coordinators: 1,
        agents: 2,
        heartbeat_ms: 200,
        // Plaintext: the bench's own gRPC client holds no certificate.
        insecure: true,
        ..Default::default()
    });
    let gateway = cluster.start_gateway();
    let addr = cluster.coordinators[0].grpc.clone();
    let mut client = rt.block_on(async {
        KilnClient::connect(format!("http://{addr}"))
            .await
            .expect("coordinator")
    });

    deploy(
        rt,
        &mut client,
        &service("one", "v1", "").replace("replicas: 2", "replicas: 1"),
    );
    settle(rt, &mut client, "one", 1);
    let replica = rt
        .block_on(get(&mut client, "one"))
        .replicas
        .first()
        .map(|r| r.endpoint.clone())
        .expect("a replica");
    overhead(&replica, &gateway, params.wrk_secs);

    deploy(rt, &mut client, &service("model", "v1", ""));
    settle(rt, &mut client, "model", 1);
    deploy(rt, &mut client, &service("model", "v2", ""));
    settle(rt, &mut client, "model", 2);
    rollbacks(rt, &mut client, &gateway, params.rollbacks);

    deploy(
        rt,
        &mut client,
        &service(
            "auto",
            "v1",
            "autoscale: { min: 1, max: 4, metric: concurrency, target: 2, window: 3s }\n",
        ),
    );
    settle(rt, &mut client, "auto", 1);
    autoscaler(rt, &mut client, &gateway, params.scale_steps);
    drop(cluster);
}

fn ensure_tools() {
    if std::path::Path::new("/usr/sbin/nginx").exists()
        && std::path::Path::new("/usr/bin/wrk").exists()
    {
        return;
    }
    eprintln!("kiln-bench services: installing Debian's nginx and wrk (no service is started)");
    let script = "set -e; made=0; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nginx wrk >/dev/null 2>&1 || { apt-get -qq update; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk >/dev/null; }; \
        [ $made = 1 ] && rm -f /usr/sbin/policy-rc.d; true";
    let ok = Command::new("sh")
        .args(["-c", script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "installing nginx and wrk failed");
}

fn deploy(rt: &tokio::runtime::Runtime, client: &mut KilnClient<Channel>, yaml: &str) {
    let req = pb::DeployRequest {
        service_yaml: yaml.to_string(),
        file_name: "bench.yaml".into(),
        ..Default::default()
    };
    rt.block_on(client.deploy(req)).expect("deploy");
}

async fn get(client: &mut KilnClient<Channel>, name: &str) -> pb::ServiceView {
    client
        .get_service(pb::GetServiceRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("get service")
        .into_inner()
}

/// Waits until the service runs `revision` only, every replica serving.
fn settle(
    rt: &tokio::runtime::Runtime,
    client: &mut KilnClient<Channel>,
    name: &str,
    revision: u32,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        loop {
            let s = get(client, name).await;
            if s.rollout == "none"
                && s.revision == revision
                && s.serving == s.desired
                && s.replicas.len() as u32 == s.desired
                && s.replicas.iter().all(|r| r.revision == revision)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not settle on revision {revision}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(url: &str, secs: u64) -> Wrk {
    let run = |d: &str| {
        Command::new("wrk")
            .args(["-t2", "-c50", &format!("-d{d}"), "--latency", url])
            .stdin(Stdio::null())
            .output()
            .expect("wrk")
    };
    run("2s");
    let out = String::from_utf8_lossy(&run(&format!("{secs}s")).stdout).into_owned();
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        let (n, factor) = if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, 1.0)
        };
        n.parse::<f64>().unwrap_or(f64::NAN) * factor
    };
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let errors = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(e) = errors {
        println!("    wrk {url}: {}", e.trim());
    }
    Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(f64::NAN),
        p50_ms: ms(&field("50%")),
        p99_ms: ms(&field("99%")),
    }
}

/// nginx proxying to `upstream` with upstream keepalive, on a free port.
fn nginx(upstream: &str) -> (Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n  upstream backend {{ server {upstream}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
    let child = Command::new("/usr/sbin/nginx")
        .args([
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &format!("{d}/nginx.conf"),
            "-g",
            "daemon off;",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr, dir)
}

fn overhead(replica: &str, gateway: &str, secs: u64) {
    let (mut nginx, nginx_addr, _dir) = nginx(replica);
    println!(
        "\ngateway overhead: wrk -t2 -c50 -d{secs}s --latency, GET /healthz of one model-server replica (same run)"
    );
    println!(
        "  {:<34} {:>10} {:>9} {:>9}",
        "path", "req/s", "p50 ms", "p99 ms"
    );
    let rows = [
        ("direct to the replica", format!("http://{replica}/healthz")),
        ("kiln gateway", format!("http://{gateway}/one/healthz")),
        (
            "nginx (upstream keepalive)",
            format!("http://{nginx_addr}/healthz"),
        ),
    ];
    let mut results = Vec::new();
    for (label, url) in &rows {
        let w = wrk(url, secs);
        println!(
            "  {label:<34} {:>10.0} {:>9.2} {:>9.2}",
            w.rps, w.p50_ms, w.p99_ms
        );
        results.push(w);
    }
    let (direct, kiln, nginx_w) = (&results[0], &results[1], &results[2]);
    println!(
        "  kiln / nginx throughput {:.2}; kiln p99 − nginx p99 {:+.2} ms; added p50 over direct: kiln {:+.2} ms, nginx {:+.2} ms",
        kiln.rps / nginx_w.rps,
        kiln.p99_ms - nginx_w.p99_ms,
        kiln.p50_ms - direct.p50_ms,
        nginx_w.p50_ms - direct.p50_ms
    );
    let _ = nginx.kill();
    let _ = nginx.wait();
}

fn version(a: &Answer) -> String {
    serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v["model_version"].as_str().map(String::from))
        .unwrap_or_default()
}

fn rollbacks(
    rt: &tokio::runtime::Runtime,
    client: &mut KilnClient<Channel>,
    gateway: &str,
    rounds: usize,
) {
    println!(
        "\nrollback under load (4 clients through the gateway, 2 replicas): call → every answer from the target revision"
    );
    let mut times = Vec::new();
    let mut failed = 0;
    let mut total = 0;
    for round in 0..rounds {
        let to = if round % 2 == 0 { 1 } else { 2 };
        let want = format!("v{to}");
        let load = Load::start(gateway, "/model/predict", PREDICT, 4);
        std::thread::sleep(Duration::from_millis(300));
        let called = Instant::now();
        rt.block_on(client.rollback(pb::RollbackRequest {
            service: "model".into(),
            to,
            ..Default::default()
        }))
        .expect("rollback");
        settle(rt, client, "model", to);
        std::thread::sleep(Duration::from_millis(300));
        let answers = load.stop();
        total += answers.len();
        failed += answers.iter().filter(|a| a.status != 200).count();
        let last_wrong = answers.iter().rposition(|a| version(a) != want);
        let switched = match last_wrong {
            Some(i) if i + 1 < answers.len() => answers[i + 1].at,
            Some(_) => Instant::now(),
            None => called,
        };
        let ms = switched.saturating_duration_since(called).as_secs_f64() * 1000.0;
        println!("  round {} (to revision {to}): {ms:.0} ms", round + 1);
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "  median {:.0} ms, max {:.0} ms; {failed} of {total} requests failed",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

fn autoscaler(
    rt: &tokio::runtime::Runtime,
    client: &mut KilnClient<Channel>,
    gateway: &str,
    steps: usize,
) {
    println!(
        "\nautoscaler reaction (concurrency, target 2 per replica, 40 ms predictions): 0 → 8 clients"
    );
    println!(
        "  {:<6} {:>18} {:>22}",
        "step", "→ decision (ms)", "→ new replica serving"
    );
    for step in 0..steps {
        let load = Load::start(gateway, "/auto/predict", PREDICT, 8);
        let t0 = Instant::now();
        let (mut decided, mut serving) = (None, None);
        rt.block_on(async {
            while serving.is_none() && t0.elapsed() < Duration::from_secs(30) {
                let s = get(client, "auto").await;
                if decided.is_none() && s.desired > 1 {
                    decided = Some(t0.elapsed());
                }
                if s.serving > 1 {
                    serving = Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let answers = load.stop();
        let failed = answers.iter().filter(|a| a.status != 200).count();
        let show = |d: Option<Duration>| {
            d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        };
        println!(
            "  {:<6} {:>18} {:>22}   ({failed} of {} requests failed)",
            step + 1,
            show(decided),
            show(serving),
            answers.len()
        );
        // Back to one replica after the 3 s window.
        let deadline = Instant::now() + Duration::from_secs(30);
        rt.block_on(async {
            while get(client, "auto").await.replicas.len() > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}
