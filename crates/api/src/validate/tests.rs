//! One row per kind of bad input: each must name the field, the line where there is one, and
//! the reason.

use super::*;
use crate::spec::GpuRequest;

fn err(src: &str) -> String {
    match parse_pipeline("p.yaml", src) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = "\
name: demo
stages:
  - name: build
    command: make
    resources: { cpu: 500m, memory: 256Mi }
  - name: test
    needs: [build]
    command: [make, test]
    retries: 2
    timeout: 5m
    env: { RUST_LOG: info }
";

#[test]
fn a_good_pipeline_parses_with_defaults() {
    let p = parse_pipeline("p.yaml", GOOD).expect("valid");
    assert_eq!(p.name, "demo");
    assert_eq!(
        p.stages[0].resources,
        Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20
        }
    );
    assert_eq!(p.stages[0].timeout_ms, defaults::TIMEOUT_MS);
    assert_eq!(p.stages[1].needs, vec!["build".to_string()]);
    assert_eq!(
        p.stages[1].command,
        Command::Argv(vec!["make".into(), "test".into()])
    );
    assert_eq!(p.stages[1].retries, 2);
    assert_eq!(p.stages[1].timeout_ms, 300_000);
}

#[test]
fn malformed_yaml_names_the_line() {
    let e = err("name: demo\nstages:\n  - name: a\n    command: [unclosed\n");
    assert!(e.starts_with("p.yaml:"), "{e}");
    assert!(e.lines().count() == 1, "{e}");
}

#[test]
fn unknown_field_names_the_field_and_line() {
    let e = err("name: demo\nstages:\n  - name: a\n    comand: make\n");
    assert!(e.contains("p.yaml:4"), "{e}");
    assert!(e.contains("unknown field `comand`"), "{e}");
}

#[test]
fn cycle_is_reported_with_its_path() {
    let e = err(
        "name: d\nstages:\n  - name: a\n    needs: [b]\n    command: x\n  - name: b\n    needs: [a]\n    command: x\n",
    );
    assert!(e.contains("cycle: a -> b -> a"), "{e}");
    assert!(e.contains("p.yaml:4: stages.a.needs"), "{e}");
}

#[test]
fn unknown_needs() {
    let e = err("name: d\nstages:\n  - name: a\n    needs: [biuld]\n    command: x\n");
    assert_eq!(e, "p.yaml:4: stages.a.needs: unknown stage \"biuld\"");
}

#[test]
fn self_need() {
    let e = err("name: d\nstages:\n  - name: a\n    needs: [a]\n    command: x\n");
    assert!(e.contains("cannot need itself"), "{e}");
}

#[test]
fn empty_or_missing_command() {
    assert!(
        err("name: d\nstages:\n  - name: a\n    command: \"  \"\n")
            .contains("p.yaml:4: stages.a.command: empty command")
    );
    assert!(
        err("name: d\nstages:\n  - name: a\n    command: []\n")
            .contains("stages.a.command: empty command")
    );
    assert!(err("name: d\nstages:\n  - name: a\n").contains("p.yaml:3: stages.a.command: missing"));
}

#[test]
fn bad_resources() {
    let zero = err("name: d\nstages:\n  - name: a\n    command: x\n    resources:\n      cpu: 0\n");
    assert_eq!(
        zero,
        "p.yaml:6: stages.a.resources.cpu: 0 must be greater than zero"
    );
    let negative =
        err("name: d\nstages:\n  - name: a\n    command: x\n    resources: { memory: -5Mi }\n");
    assert!(
        negative.contains("p.yaml:5: stages.a.resources.memory"),
        "{negative}"
    );
    let absurd =
        err("name: d\nstages:\n  - name: a\n    command: x\n    resources: { cpu: 100000 }\n");
    assert!(
        absurd.contains("more than the limit of 1024 cores"),
        "{absurd}"
    );
    let unit = err(
        "name: d\nstages:\n  - name: a\n    command: x\n    resources: { memory: 5 parsecs }\n",
    );
    assert!(unit.contains("unknown memory unit"), "{unit}");
}

#[test]
fn duplicate_stage_names() {
    let e = err("name: d\nstages:\n  - name: a\n    command: x\n  - name: a\n    command: y\n");
    assert_eq!(e, "p.yaml:5: stages.a: duplicate stage name");
}

#[test]
fn bad_names_retries_timeouts_and_env() {
    assert!(
        err("name: \"bad name\"\nstages:\n  - name: a\n    command: x\n")
            .contains("p.yaml:1: name:")
    );
    assert!(err("name: d\nstages: []\n").contains("at least one stage"));
    assert!(
        err("name: d\nstages:\n  - name: a\n    command: x\n    retries: -1\n")
            .contains("p.yaml:5: stages.a.retries: -1 is out of range")
    );
    assert!(
        err("name: d\nstages:\n  - name: a\n    command: x\n    timeout: 0s\n")
            .contains("stages.a.timeout: 0s must be greater than zero")
    );
    assert!(
        err("name: d\nstages:\n  - name: a\n    command: x\n    env: { \"1BAD\": x }\n")
            .contains("not a valid environment variable name")
    );
}

#[test]
fn every_error_is_reported_once_per_line() {
    let e = err(
        "name: d\nstages:\n  - name: a\n    command: \"\"\n  - name: b\n    needs: [zz]\n    command: x\n",
    );
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn gpu_requests() {
    let whole = parse_pipeline("p.yaml", "name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpus: 2, gpu_model: \"*H100*\", gpu_min_memory: 40GiB }\n").unwrap();
    assert_eq!(
        whole.stages[0].gpu,
        Some(GpuRequest {
            count: 2,
            share_bytes: 0,
            model: Some("*H100*".into()),
            min_memory_bytes: 40 << 30
        })
    );
    let share = parse_pipeline(
        "p.yaml",
        "name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpu_memory: 20GiB }\n",
    )
    .unwrap();
    assert!(share.stages[0].gpu.as_ref().unwrap().is_share());
    assert_eq!(parse_pipeline("p.yaml", GOOD).unwrap().stages[0].gpu, None);
}

#[test]
fn bad_gpu_requests_name_the_field() {
    let neg = err("name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpus: -1 }\n");
    assert_eq!(
        neg,
        "p.yaml:5: stages.a.resources.gpus: -1 is out of range (1 to 64)"
    );
    let zero =
        err("name: d\nstages:\n  - name: a\n    command: x\n    resources:\n      gpu_memory: 0\n");
    assert_eq!(
        zero,
        "p.yaml:6: stages.a.resources.gpu_memory: 0 must be greater than zero"
    );
    let unit = err(
        "name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpu_memory: 20GB2 }\n",
    );
    assert!(unit.contains("stages.a.resources.gpu_memory"), "{unit}");
    let huge =
        err("name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpu_memory: 2TiB }\n");
    assert!(huge.contains("more than the limit of 1024 GiB"), "{huge}");
    let both = err(
        "name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpus: 1, gpu_memory: 1GiB }\n",
    );
    assert!(both.contains("not both"), "{both}");
    let lonely = err(
        "name: d\nstages:\n  - name: a\n    command: x\n    resources: { gpu_model: \"A100*\" }\n",
    );
    assert!(lonely.contains("need gpus or gpu_memory"), "{lonely}");
}

#[test]
fn globs() {
    use crate::spec::glob_match;
    assert!(glob_match("*H100*", "NVIDIA H100 80GB HBM3"));
    assert!(glob_match("NVIDIA A?00*", "NVIDIA A100-SXM4-40GB"));
    assert!(!glob_match("*H100*", "NVIDIA A100-SXM4-40GB"));
    assert!(glob_match("*", ""));
}

const CONTAINERS: &str = "\
name: images
stages:
  - name: image
    build: { context: ./app/../app, name: team/app }
  - name: check
    needs: [image]
    command: [sh, -c, 'true']
  - name: smoke
    needs: [check]
    image: ${{ stages.image.image }}
  - name: plain
    image: busybox:1.36
    command: echo hi
";

#[test]
fn image_and_build_stages_parse_and_choose_the_docker_driver() {
    use crate::spec::{Build, Container, ImageRef};
    let p = parse_pipeline("p.yaml", CONTAINERS).expect("valid");
    assert_eq!(
        p.stages[0].container,
        Some(Container::Build(Build {
            context: "app".into(),
            dockerfile: "Dockerfile".into(),
            name: "team/app".into(),
            context_digest: String::new(),
        }))
    );
    assert_eq!(p.stages[0].command, Command::None);
    assert_eq!(p.stages[0].driver(), "docker");
    assert_eq!(p.stages[1].driver(), "process");
    assert_eq!(
        p.stages[2].container,
        Some(Container::Image(ImageRef::Built {
            stage: "image".into()
        }))
    );
    assert_eq!(
        p.stages[3].container,
        Some(Container::Image(ImageRef::Named("busybox:1.36".into())))
    );
}

#[test]
fn container_fields_are_checked() {
    let rows: &[(&str, &str, &str)] = &[
        (
            "context outside",
            "name: x\nstages:\n  - name: b\n    build: { context: ../.., name: app }\n",
            "p.yaml:4: stages.b.build.context: \"../..\" is outside the pipeline's directory",
        ),
        (
            "absolute context",
            "name: x\nstages:\n  - name: b\n    build: { context: /etc, name: app }\n",
            "stages.b.build.context: \"/etc\" must be a relative path inside the pipeline's directory",
        ),
        (
            "dockerfile outside",
            "name: x\nstages:\n  - name: b\n    build: { context: ., dockerfile: ../Dockerfile, name: app }\n",
            "stages.b.build.dockerfile: \"../Dockerfile\" is outside the build context",
        ),
        (
            "bad repository",
            "name: x\nstages:\n  - name: b\n    build: { context: ., name: App }\n",
            "stages.b.build.name: \"App\" is not a repository name",
        ),
        (
            "both",
            "name: x\nstages:\n  - name: b\n    image: busybox\n    build: { context: ., name: app }\n",
            "p.yaml:5: stages.b: image: and build: cannot both be set",
        ),
        (
            "not needed",
            "name: x\nstages:\n  - name: b\n    build: { context: ., name: app }\n  - name: r\n    image: ${{ stages.b.image }}\n",
            "p.yaml:6: stages.r.image: stage \"b\" must be among the stages \"r\" needs",
        ),
        (
            "not a build",
            "name: x\nstages:\n  - name: b\n    command: make\n  - name: r\n    needs: [b]\n    image: ${{ stages.b.image }}\n",
            "stages.r.image: stage \"b\" builds no image",
        ),
        (
            "bad expression",
            "name: x\nstages:\n  - name: r\n    image: ${{ stages.b.digest }}\n",
            "stages.r.image: \"${{ stages.b.digest }}\": the only expression here is ${{ stages.NAME.image }}",
        ),
        (
            "no command, no image",
            "name: x\nstages:\n  - name: r\n",
            "stages.r.command: missing: a stage without image:, build:, tests: or deploy: needs a command",
        ),
    ];
    for (name, src, want) in rows {
        let got = err(src);
        assert!(got.contains(want), "row {name:?}: {got}");
    }
}

const SUITE: &str = "\
name: suite
stages:
  - name: unit
    shards: 4
    retries: 1
    tests:
      list: ./list.sh
      run: ./run.sh \"$KILN_TESTS_FILE\"
      report: reports/*.xml
      split: static
  - name: auto
    shards: { max: 8, target: 2m }
    tests: { list: ls t, run: ./t, report: \"*.xml\" }
  - name: plain
    shards: 3
    command: ./bazel-style-runner
";

#[test]
fn sharded_and_test_stages_parse() {
    use crate::spec::{Shards, Split};
    let p = parse_pipeline("p.yaml", SUITE).expect("valid");
    assert_eq!(p.stages[0].shards, Some(Shards::Fixed(4)));
    let tests = p.stages[0].tests.as_ref().unwrap();
    assert_eq!(tests.split, Split::Static);
    assert_eq!(tests.report, "reports/*.xml");
    assert_eq!(p.stages[0].command, Command::None);
    assert_eq!(
        p.stages[1].shards,
        Some(Shards::Auto {
            max: 8,
            target_ms: 120_000
        })
    );
    assert_eq!(p.stages[1].tests.as_ref().unwrap().split, Split::Dynamic);
    assert_eq!(p.stages[2].shards, Some(Shards::Fixed(3)));
    assert!(p.stages[2].tests.is_none());
}

#[test]
fn bad_shards_and_tests_name_the_field_and_line() {
    let rows = [
        (
            "shards: 0",
            "name: s\nstages:\n  - name: t\n    shards: 0\n    command: x\n",
            "p.yaml:4: stages.t.shards: 0 is out of range (1 to 256)",
        ),
        (
            "shards.max",
            "name: s\nstages:\n  - name: t\n    shards: { max: 1000, target: 1m }\n    tests: { list: l, run: r, report: x.xml }\n",
            "p.yaml:4: stages.t.shards.max: 1000 is out of range (1 to 256)",
        ),
        (
            "target without tests",
            "name: s\nstages:\n  - name: t\n    command: x\n    shards: { max: 4, target: 1m }\n",
            "p.yaml:5: stages.t.shards.target: target picks the count",
        ),
        (
            "command with tests",
            "name: s\nstages:\n  - name: t\n    command: x\n    tests: { list: l, run: r, report: x.xml }\n",
            "p.yaml:4: stages.t.command: a stage with tests: runs tests.run",
        ),
        (
            "empty list",
            "name: s\nstages:\n  - name: t\n    tests:\n      list: ''\n      run: r\n      report: x.xml\n",
            "p.yaml:5: stages.t.tests.list: must not be empty",
        ),
        (
            "report outside",
            "name: s\nstages:\n  - name: t\n    tests:\n      list: l\n      run: r\n      report: ../x.xml\n",
            "p.yaml:7: stages.t.tests.report: \"../x.xml\" must be a glob relative",
        ),
        (
            "split",
            "name: s\nstages:\n  - name: t\n    tests:\n      list: l\n      run: r\n      report: x.xml\n      split: random\n",
            "p.yaml:8: stages.t.tests.split: \"random\" is not one of dynamic, static, count",
        ),
        (
            "tests in a container",
            "name: s\nstages:\n  - name: t\n    image: busybox\n    tests: { list: l, run: r, report: x.xml }\n",
            "p.yaml:5: stages.t.tests: tests: run on the process driver",
        ),
    ];
    for (what, src, want) in rows {
        let e = err(src);
        assert!(e.starts_with(want), "{what}: got {e:?}, want {want:?}");
    }
}

const SERVICE: &str = "\
name: model
command: exec ./model-server
env: { MODEL_WEIGHTS: model/weights-v2.json }
autoscale: { min: 1, max: 5, metric: concurrency, target: 4, window: 30s }
health:
  http: /ready
  interval: 200ms
  startup: 2m
update:
  max_surge: 2
  min_healthy_time: 500ms
  canary: 1
  auto_revert: true
model: model/weights-v2.json
";

#[test]
fn a_service_parses_with_defaults() {
    use crate::service::{HealthCheck, Metric};
    let s = parse_service("svc.yaml", SERVICE).expect("valid");
    assert_eq!(s.name, "model");
    assert_eq!(s.replicas, 1, "autoscale.min");
    let a = s.autoscale.as_ref().unwrap();
    assert_eq!(
        (a.min, a.max, a.metric.clone(), a.target, a.window_ms),
        (1, 5, Metric::Concurrency, 4.0, 30_000)
    );
    assert_eq!(s.health.check, HealthCheck::Http("/ready".into()));
    assert_eq!((s.health.interval_ms, s.health.startup_ms), (200, 120_000));
    assert_eq!(
        (
            s.update.max_surge,
            s.update.max_unavailable,
            s.update.canary
        ),
        (2, 0, 1)
    );
    assert!(s.update.auto_revert && !s.update.auto_promote);
    assert_eq!(s.port, 0);
    assert_eq!(
        s.replica.command,
        Command::Shell("exec ./model-server".into())
    );
    assert!(
        s.replica.timeout_ms > 365 * 24 * 3_600_000,
        "services do not time out"
    );
    let custom = "name: q\ncommand: x\nautoscale: { min: 0, max: 3, metric: \"prometheus:model_queue_depth\", target: 5 }\n";
    let s = parse_service("q.yaml", custom).unwrap();
    assert_eq!(
        s.autoscale.unwrap().metric,
        Metric::Prometheus("model_queue_depth".into())
    );
}

#[test]
fn bad_services_name_the_field_and_line() {
    let rows = [
        (
            "replicas above max",
            "name: m\ncommand: x\nreplicas: 10\nautoscale: { min: 1, max: 5, metric: rps, target: 100 }\n",
            "svc.yaml:3: replicas: 10 is above autoscale.max (5)",
        ),
        (
            "unknown metric",
            "name: m\ncommand: x\nautoscale:\n  min: 1\n  max: 5\n  metric: latency\n  target: 1\n",
            "svc.yaml:6: autoscale.metric: \"latency\" is not one of concurrency, rps, cpu, gpu, prometheus:<metric name>",
        ),
        (
            "health path without a slash",
            "name: m\ncommand: x\nhealth:\n  http: healthz\n",
            "svc.yaml:4: health.http: \"healthz\" must start with '/'",
        ),
        (
            "nothing to run",
            "name: m\nreplicas: 1\n",
            "svc.yaml:1: command: missing: a service runs a command or an image",
        ),
        (
            "an image service without its port",
            "name: m\nimage: busybox\n",
            "svc.yaml:2: port: an image replica needs the port it listens on",
        ),
        (
            "an exec check of an image service",
            "name: m\nimage: busybox\nport: 80\nhealth:\n  exec: ./check\n",
            "svc.yaml:5: health.exec: an exec check runs on the node",
        ),
        (
            "a rollout that cannot move",
            "name: m\ncommand: x\nupdate: { max_surge: 0, max_unavailable: 0 }\n",
            "svc.yaml:3: update: max_surge and max_unavailable cannot both be 0",
        ),
        (
            "replica fields are checked as a stage's",
            "name: m\ncommand: x\nresources: { cpu: lots }\n",
            "svc.yaml:3: resources.cpu: \"lots\" is not a CPU quantity",
        ),
        (
            "unknown field",
            "name: m\ncommand: x\nreplica: 2\n",
            "svc.yaml:3: unknown field `replica`",
        ),
    ];
    for (what, src, want) in rows {
        let e = match parse_service("svc.yaml", src) {
            Ok(s) => panic!("{what}: expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(want), "{what}: got {e:?}, want {want:?}");
    }
}

const DELIVERY: &str = "\
name: ship
stages:
  - name: image
    build: { context: app, name: e2e/web }
  - name: staging
    needs: [image]
    deploy:
      service: deploy/service.yaml
      environment: staging
      image: ${{ stages.image.image }}
  - name: production
    needs: [staging]
    deploy: { promote: web, from: staging, environment: production }
";

#[test]
fn deploy_stages_parse() {
    use crate::spec::{DeployStage, ImageRef};
    let p = parse_pipeline("p.yaml", DELIVERY).expect("valid");
    assert_eq!(
        p.stages[1].deploy,
        Some(DeployStage::Service {
            file: "deploy/service.yaml".into(),
            yaml: String::new(),
            environment: Some("staging".into()),
            image: Some(ImageRef::Built {
                stage: "image".into()
            }),
            model: None,
        })
    );
    assert_eq!(
        p.stages[2].deploy,
        Some(DeployStage::Promote {
            service: "web".into(),
            from: "staging".into(),
            environment: "production".into(),
        })
    );
    assert_eq!(p.stages[1].command, Command::None);
}

#[test]
fn bad_deploy_stages_name_the_field_and_line() {
    let stage = |deploy: &str| format!("name: p\nstages:\n  - name: d\n{deploy}");
    let cases = [
        (
            stage("    command: make\n    deploy: { service: s.yaml }\n"),
            "p.yaml:4: stages.d.command: a deploy stage runs no command of its own",
        ),
        (
            stage("    deploy: { service: s.yaml, promote: web }\n"),
            "p.yaml:4: stages.d.deploy.promote: service: and promote: cannot both be set",
        ),
        (
            stage("    deploy: { environment: staging }\n"),
            "stages.d.deploy.service: missing: a service file to deploy, or promote: a service's name",
        ),
        (
            stage("    deploy: { promote: web, environment: production }\n"),
            "stages.d.deploy.from: missing: the environment to promote from",
        ),
        (
            stage("    deploy: { promote: web, from: a, environment: a }\n"),
            "stages.d.deploy.from: promoting from an environment to itself",
        ),
        (
            stage("    deploy: { service: ../s.yaml }\n"),
            "stages.d.deploy.service: \"../s.yaml\" is outside the pipeline's directory",
        ),
        (
            stage("    deploy: { service: s.yaml, environment: a.b }\n"),
            "stages.d.deploy.environment: \"a.b\" may not hold '.'",
        ),
        (
            "name: p\nstages:\n  - name: b\n    build: { context: ., name: x }\n  - name: d\n    deploy:\n      service: s.yaml\n      image: ${{ stages.b.image }}\n".to_string(),
            "p.yaml:8: stages.d.deploy.image: stage \"b\" must be among the stages \"d\" needs",
        ),
    ];
    for (src, want) in cases {
        let e = err(&src);
        assert!(e.contains(want), "{src}\nwant {want:?}\ngot  {e}");
    }
}

#[test]
fn bad_artifacts_name_the_field() {
    let cases = [
        (
            "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [a/model, b/model]\n",
            "stages.t.artifacts: \"b/model\" and \"a/model\" would both be named \"model\"",
        ),
        (
            "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [../up]\n",
            "stages.t.artifacts: \"../up\" is outside the work directory",
        ),
        (
            "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [m]\n  - name: d\n    needs: [t]\n    deploy:\n      service: s.yaml\n      model: ${{ stages.t.artifacts.other }}\n",
            "p.yaml:10: stages.d.deploy.model: stage \"t\" publishes no artifact named \"other\"",
        ),
        (
            "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [m]\n  - name: d\n    deploy:\n      service: s.yaml\n      model: ${{ stages.t.artifacts.m }}\n",
            "stages.d.deploy.model: stage \"t\" must be among the stages \"d\" needs",
        ),
        (
            "name: p\nstages:\n  - name: d\n    deploy: { service: s.yaml, model: weights.bin }\n",
            "stages.d.deploy.model: \"weights.bin\": name an artifact a stage published",
        ),
    ];
    for (src, want) in cases {
        let e = err(src);
        assert!(e.contains(want), "{src}\nwant {want:?}\ngot  {e}");
    }
}

#[test]
fn a_stage_takes_an_artifact_as_an_input() {
    let p = parse_pipeline(
        "p.yaml",
        "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [out/m]\n  - name: u\n    needs: [t]\n    command: y\n    env: { W: \"${{ stages.t.artifacts.m }}\", K: v }\n",
    )
    .expect("valid");
    let u = &p.stages[1];
    assert_eq!(
        u.env.keys().collect::<Vec<_>>(),
        ["K"],
        "an input is no value"
    );
    assert_eq!(u.inputs["W"].stage, "t");
    assert_eq!(u.inputs["W"].name, "m");
    let e = err(
        "name: p\nstages:\n  - name: u\n    command: y\n    env: { W: \"${{ stages.t.image }}\" }\n",
    );
    assert!(
        e.contains("stages.u.env.W: \"${{ stages.t.image }}\": name an artifact"),
        "{e}"
    );
}

#[test]
fn kiln_variables_and_container_inputs_are_refused() {
    let e = err("name: p\nstages:\n  - name: s\n    command: x\n    env: { KILN_MODEL_DIR: / }\n");
    assert!(
        e.contains("stages.s.env: \"KILN_MODEL_DIR\": KILN_* variables are kiln's own"),
        "{e}"
    );
    let e = err(
        "name: p\nstages:\n  - name: t\n    command: x\n    artifacts: [m]\n  - name: s\n    needs: [t]\n    image: busybox\n    env: { M: \"${{ stages.t.artifacts.m }}\" }\n",
    );
    assert!(
        e.contains("stages.s.env.M: an image or build stage takes no artifact inputs"),
        "{e}"
    );
}

const TRIGGERED: &str = "\
name: ship
on:
  branches: [main, \"release/**\"]
  tags: [\"v*\"]
  paths_ignore: [\"docs/**\", \"*.md\"]
concurrency:
  group: deploy-${{ git.branch }}-${{git.repository}}
  cancel_in_progress: true
stages:
  - name: build
    command: make
  - name: migrate
    needs: [build]
    command: ./migrate
    interruptible: false
";

#[test]
fn triggers_concurrency_and_interruptible_stages_parse() {
    use crate::spec::{Concurrency, Triggers};
    let p = parse_pipeline("p.yaml", TRIGGERED).expect("valid");
    let on = Triggers {
        branches: Some(vec!["main".into(), "release/**".into()]),
        tags: Some(vec!["v*".into()]),
        paths: Vec::new(),
        paths_ignore: vec!["docs/**".into(), "*.md".into()],
    };
    assert_eq!(p.on, Some(on));
    let concurrency = Concurrency {
        group: "deploy-${{ git.branch }}-${{git.repository}}".into(),
        cancel_in_progress: true,
    };
    assert_eq!(p.concurrency, Some(concurrency));
    assert!(p.stages[0].interruptible, "interruptible by default");
    assert!(!p.stages[1].interruptible);

    let plain = parse_pipeline("p.yaml", GOOD).unwrap();
    assert_eq!((plain.on, plain.concurrency), (None, None));
    let queued = parse_pipeline(
        "p.yaml",
        "name: d\nconcurrency: { group: g }\nstages:\n  - name: a\n    command: x\n",
    )
    .unwrap();
    assert!(!queued.concurrency.unwrap().cancel_in_progress);
}

#[test]
fn pipelines_without_the_trigger_fields_are_stored_as_before() {
    let plain = parse_pipeline("p.yaml", GOOD).unwrap();
    let text = serde_yaml_ng::to_string(&plain).unwrap();
    for key in ["interruptible", "concurrency", "\non:"] {
        assert!(!text.contains(key), "{key:?} in {text}");
    }
    let back: Pipeline = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(back, plain);
    let triggered = parse_pipeline("p.yaml", TRIGGERED).unwrap();
    let text = serde_yaml_ng::to_string(&triggered).unwrap();
    let back: Pipeline = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(back, triggered);
}

#[test]
fn bad_triggers_and_concurrency_name_the_field_and_line() {
    let with = |top: &str| format!("name: p\n{top}stages:\n  - name: a\n    command: x\n");
    let cases = [
        (
            with("on:\n  branches: [main, \"[\"]\n"),
            "p.yaml:3: on.branches[1]: \"[\": unclosed character class; missing ']'",
        ),
        (
            with("on:\n  paths: [src/**]\n  paths_ignore: [docs/**]\n"),
            "p.yaml:4: on.paths_ignore: paths and paths_ignore cannot both be set",
        ),
        (
            with("on:\n  tags: [\"refs/tags/v*\"]\n"),
            "p.yaml:3: on.tags[0]: \"refs/tags/v*\": on.tags holds names, not refs",
        ),
        (
            with("on:\n  paths: [\"/src/**\"]\n"),
            "p.yaml:3: on.paths[0]: \"/src/**\": paths are relative to the repository",
        ),
        (
            with("concurrency:\n  group: ${{ github.ref }}\n"),
            "p.yaml:3: concurrency.group: \"${{ github.ref }}\": the only expressions here are ${{ git.branch }}, ${{ git.ref }}, ${{ git.repository }} and ${{ git.commit }}",
        ),
        (
            with("concurrency: { group: \"\" }\n"),
            "p.yaml:2: concurrency.group: must not be empty",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(err(&src), want, "{src}");
    }
    let unknown = err(&with("on:\n  branch: [main]\n"));
    assert!(unknown.starts_with("p.yaml:3: "), "{unknown}");
    assert!(unknown.contains("unknown field `branch`"), "{unknown}");
}

#[test]
fn a_spec_with_thousands_of_problems_gets_a_short_message_that_counts_them() {
    let mut src = String::from("name: p\nstages:\n");
    for i in 0..5_000 {
        src.push_str(&format!("  - name: s{i}\n"));
    }
    let errors = parse_pipeline("p.yaml", &src).unwrap_err();
    let n = errors.0.len();
    assert!(n >= 5_000, "every problem is kept: {n}");
    let message = errors.to_string();
    assert!(message.len() < 8 << 10, "{} bytes", message.len());
    assert_eq!(message.lines().count(), MAX_SHOWN_ERRORS + 1);
    let more = format!("… and {} more problems", n - MAX_SHOWN_ERRORS);
    assert!(message.ends_with(&more), "{message}");
}
