//! `kiln`: the command line for a kiln cluster, and `kiln dev`, a whole cluster (one
//! coordinator and one agent) in one process.
//!
//! Every command finds the leader by itself from `--addr` / `KILN_ADDR` (any coordinator,
//! or several comma-separated). Read commands take `--json`. Exit codes are in `error.rs`.

mod client;
mod commands;
mod error;
mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use client::Client;
use error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "kiln: a distributed CI/CD scheduler for AI services"
)]
struct Cli {
    /// Coordinator gRPC address(es), comma-separated; any one will do.
    #[arg(
        long,
        global = true,
        env = "KILN_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7470"
    )]
    addr: Vec<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to keep retrying while no leader answers, in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    wait: u64,
    /// The cluster CA's certificate (default: ./.kiln/tls/ca.pem, as `kiln dev` writes it).
    #[arg(long, global = true, env = "KILN_CA")]
    ca: Option<PathBuf>,
    /// A client certificate (`kiln tls issue client NAME`): the admin role.
    #[arg(long, global = true, env = "KILN_CERT")]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "KILN_KEY")]
    key: Option<PathBuf>,
    /// An API token (`kiln token create`): its role, instead of a certificate's.
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Plaintext to a cluster started with --insecure (loopback addresses only).
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a coordinator and an agent in this process, with data on local disk.
    Dev(commands::dev::DevArgs),
    /// Submit a pipeline file (or, with --repo, a repository's pipeline at a ref); prints
    /// the run id.
    Run {
        /// The pipeline file (not with --repo).
        #[arg(required_unless_present = "repo", conflicts_with = "repo")]
        file: Option<PathBuf>,
        /// Run this repository's pipeline, read at --ref, as a push would.
        #[arg(long)]
        repo: Option<String>,
        /// A branch, tag, full ref or commit id of --repo (default: its main branch).
        #[arg(long = "ref", requires = "repo")]
        git_ref: Option<String>,
        /// Show progress until the run ends, and exit with its status.
        #[arg(long, short)]
        follow: bool,
        /// Idempotency key: submitting the same id twice creates one run.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List runs, or show one run's stages.
    Status {
        run: Option<String>,
        /// How many runs, newest first, archived ones included (0: every run in memory,
        /// oldest first).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only runs older than this one (the next page).
        #[arg(long)]
        before: Option<String>,
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs with this status.
        #[arg(long = "status", value_name = "STATUS")]
        only: Option<String>,
    },
    /// Print a stage's output, read from the node that ran it.
    Logs {
        run: String,
        stage: String,
        /// Keep streaming until the stage ends.
        #[arg(long, short)]
        follow: bool,
        /// Which attempt (default: the latest).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// Which shard of a sharded stage (from 0).
        #[arg(long, default_value_t = 0)]
        shard: u32,
    },
    /// Show a run's test results: per-shard wall time and imbalance, the slowest tests,
    /// failed and flaky tests.
    Tests {
        run: String,
        /// How many of the slowest tests to list.
        #[arg(long, default_value_t = 10)]
        slowest: usize,
    },
    /// Run a run's pipeline again as a new run; prints the new run id.
    Rerun {
        run: String,
        /// Only the tests that did not pass (each tests: stage runs just those).
        #[arg(long)]
        failed: bool,
        /// Show progress until the new run ends, and exit with its status.
        #[arg(long, short)]
        follow: bool,
    },
    /// List nodes with their capacity, reservations and live usage.
    Nodes,
    /// Cancel a run: pending stages never start, running ones are killed.
    Cancel { run: String },
    /// Coordinator membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Deploy a service file: a new revision, rolled out by its update strategy (held until
    /// `kiln approve` in an environment that requires approval).
    Deploy {
        file: PathBuf,
        /// The git commit to record (default: HEAD where the file is, if a checkout).
        #[arg(long)]
        commit: Option<String>,
        /// The environment (default: the default environment).
        #[arg(long)]
        env: Option<String>,
        /// Deploy even the same image and model as a revision rolled back from.
        #[arg(long)]
        force: bool,
    },
    /// List services: environment, revision, serving replicas, rollout, autoscaler.
    Services,
    /// A service's revisions and events, or `--diff A B` between two revisions' specs.
    History {
        service: String,
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<u32>>,
        #[arg(long)]
        env: Option<String>,
    },
    /// Put an earlier revision back at once (default: the last known good one); the
    /// revision rolled back from is marked bad.
    Rollback {
        service: String,
        #[arg(long)]
        to: Option<u32>,
        #[arg(long)]
        env: Option<String>,
        /// Why, recorded on the revision rolled back from.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Set a service's replica count.
    Scale {
        service: String,
        replicas: u32,
        #[arg(long)]
        env: Option<String>,
    },
    /// Promote a rollout's canaries; with `--to`, deploy the revision healthy in `--from`
    /// into another environment (same image digest, same model digest).
    Promote {
        service: String,
        /// The environment of the canaries, or (with --to) the one promoted from.
        #[arg(long, alias = "env")]
        from: Option<String>,
        /// The environment to promote into.
        #[arg(long)]
        to: Option<String>,
        /// Promote even the same image and model as a revision rolled back from there.
        #[arg(long)]
        force: bool,
    },
    /// Release a deploy held for approval.
    Approve {
        service: String,
        #[arg(long)]
        env: String,
    },
    /// Repositories: git remotes whose pushes start runs (webhooks and polling).
    Repo {
        #[command(subcommand)]
        command: Option<RepoCommand>,
    },
    /// Environments: `kiln env` lists them; `kiln env create NAME` makes one.
    Env {
        #[command(subcommand)]
        command: Option<EnvCommand>,
    },
    /// The cluster's certificates: `kiln tls init DIR`, `kiln tls issue ROLE NAME`.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// API tokens for people and automation (role admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Secrets stages and services get as environment variables (`secrets: [NAME]`).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Backups: `save FILE` (role admin), `inspect FILE`, `restore FILE --data-dir DIR`.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Who did what: every mutating call and every refused one (role admin).
    Audit {
        /// Only entries newer than this (`1h`, `30m`).
        #[arg(long)]
        since: Option<String>,
        /// The newest this many entries (0: all kept).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Run the service gateway: an HTTP reverse proxy to every service's healthy replicas.
    Gateway {
        /// Where to listen for HTTP.
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: String,
        /// How long a request waits for a replica when none serves (scaled to zero).
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Make a cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        dir: PathBuf,
        /// Replace a CA already there (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate from the CA in --dir: DIR/ROLE-NAME.pem and .key. ROLE is
    /// coordinator (NAME: its Raft id), agent (NAME: its node id), gateway or client.
    Issue {
        role: String,
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// How long it is valid (default 365d).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Write a backup: the state and every build context, model and artifact it names, each
    /// with its SHA-256; read back and checked before it is kept.
    Save { file: PathBuf },
    /// Check a backup and say what it holds.
    Inspect { file: PathBuf },
    /// Make DIR (new, empty) the data dir of a new cluster's first coordinator from a backup.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum SecretCommand {
    /// Set (or replace) a secret; the value is read from stdin and never shown again.
    Set { name: String },
    /// List secrets: names, when and by whom they were set (never values).
    List,
    /// Remove a secret (stages that ask for it are refused from now on).
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; prints its text once (only its hash is kept).
    Create {
        name: String,
        /// read, submit, deploy, approve or admin.
        #[arg(long)]
        role: String,
        /// It stops working after this long (`30d`, `1h`); default never.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id, or every live token of a name.
    Revoke {
        // Not `token`: that is the global --token.
        #[arg(value_name = "ID_OR_NAME")]
        which: String,
    },
}

#[derive(Subcommand, Debug)]
enum EnvCommand {
    /// Make an environment.
    Create {
        name: String,
        /// `required`: every deploy into it waits for `kiln approve`.
        #[arg(long, value_parser = ["required", "none"], default_value = "none")]
        approval: String,
        /// The gateway routes bare service names to it from now on.
        #[arg(long)]
        default: bool,
        /// KEY=VALUE: a variable every replica in it gets, over its revision's (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
    },
    /// List environments (the same as `kiln env`).
    List,
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Watch a git remote: its pushes start its pipeline. Checks the remote answers and
    /// prints the webhook path and secret.
    Add {
        name: String,
        url: String,
        /// The pipeline file's path in the repository.
        #[arg(long, default_value = ".kiln/pipeline.yaml")]
        pipeline: String,
        /// GLOB=ENVIRONMENT: where a deploy stage with no environment deploys for a branch
        /// matching GLOB (repeatable; the first match wins), e.g. main=production.
        #[arg(long = "branch")]
        branches: Vec<String>,
        /// How often to poll the remote for pushes no webhook told of (`60s`, `5m`, `off`).
        #[arg(long)]
        poll: Option<String>,
        /// A file holding the webhook secret (default: a random one, printed once).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// A git credential-store file present on every node, for a private remote.
        #[arg(long)]
        credentials: Option<String>,
    },
    /// List repositories.
    List,
    /// Show a repository: its heads, poll error and latest pushes.
    Show { name: String },
    /// Stop watching a repository (its runs stay).
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Show the leader, the term and the members (as the coordinator that answers sees them).
    Status {
        /// Also the SHA-256 of that coordinator's state: equal on members that applied the
        /// same log.
        #[arg(long)]
        state_hash: bool,
    },
    /// Add a started, empty coordinator to the voters.
    Join {
        #[arg(long)]
        id: u64,
        /// Its gRPC address.
        #[arg(long = "member-addr")]
        member_addr: String,
    },
    /// Remove a coordinator from the voters.
    Leave {
        #[arg(long)]
        id: u64,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Commands::Dev(_) | Commands::Gateway { .. }) {
        // A reader that goes away (`kiln status | head`) ends kiln as it ends `cat`: quietly,
        // by SIGPIPE, rather than with a panic from println!. Not for the long-running
        // commands, whose sockets and children must not take the process down.
        // SAFETY: restores the default disposition before any thread of ours writes.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    // Commands that need no cluster.
    match cli.command {
        Commands::Dev(args) => return commands::dev::dev(args, json).await,
        Commands::Tls(TlsCommand::Init { dir, force }) => {
            return commands::access::init(&dir, force, json);
        }
        Commands::Tls(TlsCommand::Issue {
            role,
            name,
            dir,
            expires,
            force,
        }) => return commands::access::issue(&dir, &role, &name, expires.as_deref(), force, json),
        Commands::Snapshot(SnapshotCommand::Inspect { file }) => {
            return commands::backup::inspect(&file, json);
        }
        Commands::Snapshot(SnapshotCommand::Restore { file, data_dir }) => {
            return commands::backup::restore(&file, &data_dir, json);
        }
        _ => {}
    }
    let credentials = client::Credentials::from_flags(
        cli.ca.clone(),
        cli.cert.clone(),
        cli.key.clone(),
        cli.token.clone(),
        cli.insecure,
        &cli.addr,
    )?;
    let mut client = Client::new(
        cli.addr.clone(),
        &credentials,
        Duration::from_secs(cli.wait),
    )?;
    match cli.command {
        Commands::Dev(_)
        | Commands::Tls(_)
        | Commands::Snapshot(SnapshotCommand::Inspect { .. } | SnapshotCommand::Restore { .. }) => {
            Ok(())
        }
        Commands::Snapshot(SnapshotCommand::Save { file }) => {
            commands::backup::save(&mut client, &file, json).await
        }
        Commands::Token(TokenCommand::Create {
            name,
            role,
            expires,
        }) => commands::access::create_token(&mut client, name, role, expires, json).await,
        Commands::Token(TokenCommand::List) => {
            commands::access::list_tokens(&mut client, json).await
        }
        Commands::Token(TokenCommand::Revoke { which }) => {
            commands::access::revoke_token(&mut client, which, json).await
        }
        Commands::Secret(SecretCommand::Set { name }) => {
            commands::access::set_secret(&mut client, name, json).await
        }
        Commands::Secret(SecretCommand::List) => {
            commands::access::list_secrets(&mut client, json).await
        }
        Commands::Secret(SecretCommand::Remove { name }) => {
            commands::access::remove_secret(&mut client, name, json).await
        }
        Commands::Audit { since, limit } => {
            commands::access::audit(&mut client, since, limit, json).await
        }
        Commands::Run {
            file: Some(file),
            follow,
            request_id,
            ..
        } => commands::run::run(&mut client, &file, follow, request_id, json)
            .await
            .map(|_| ()),
        Commands::Run {
            repo: Some(repo),
            git_ref,
            follow,
            request_id,
            ..
        } => {
            let id = request_id.unwrap_or_else(commands::run::new_request_id);
            let ref_ = git_ref.unwrap_or_default();
            match commands::repos::trigger(&mut client, repo, ref_, id, json).await? {
                Some(run) if follow => commands::run::follow_to_end(&mut client, run, json)
                    .await
                    .map(|_| ()),
                Some(run) => {
                    if json {
                        println!("{}", serde_json::json!({ "run_id": run }));
                    } else {
                        println!("{run}");
                    }
                    Ok(())
                }
                None => Ok(()),
            }
        }
        Commands::Run { .. } => Err(CliError::Invalid(
            "give a pipeline file, or --repo NAME".into(),
        )),
        Commands::Status {
            run,
            limit,
            before,
            pipeline,
            only,
        } => {
            let filter = kiln_api::pb::ListRunsRequest {
                limit,
                before: before.unwrap_or_default(),
                pipeline: pipeline.unwrap_or_default(),
                status: only.unwrap_or_default(),
            };
            commands::read::status(&mut client, run, filter, json).await
        }
        Commands::Logs {
            run,
            stage,
            follow,
            attempt,
            shard,
        } => commands::read::logs(&mut client, run, stage, shard, attempt, follow).await,
        Commands::Tests { run, slowest } => {
            commands::tests::report(&mut client, run, slowest, json).await
        }
        Commands::Rerun {
            run,
            failed,
            follow,
        } => commands::tests::rerun(&mut client, run, failed, follow, json).await,
        Commands::Nodes => commands::read::nodes(&mut client, json).await,
        Commands::Cancel { run } => commands::read::cancel(&mut client, run, json).await,
        Commands::Deploy {
            file,
            commit,
            env,
            force,
        } => {
            let to = commands::services::Target { env, force };
            commands::services::deploy(&mut client, &file, commit, to, json).await
        }
        Commands::Services => commands::services::list(&mut client, json).await,
        Commands::History { service, diff, env } => {
            commands::services::history(&mut client, &service, env, diff, json).await
        }
        Commands::Rollback {
            service,
            to,
            env,
            reason,
        } => commands::services::rollback(&mut client, service, env, to, reason, json).await,
        Commands::Scale {
            service,
            replicas,
            env,
        } => commands::services::scale(&mut client, service, env, replicas, json).await,
        Commands::Promote {
            service,
            from,
            to: Some(to),
            force,
        } => {
            let from = from.ok_or_else(|| {
                CliError::Invalid(
                    "--from: the environment to promote from is needed with --to".into(),
                )
            })?;
            commands::environments::promote(&mut client, service, from, to, force, json).await
        }
        Commands::Promote {
            service,
            from,
            to: None,
            force: _,
        } => commands::services::promote(&mut client, service, from, json).await,
        Commands::Approve { service, env } => {
            commands::environments::approve(&mut client, service, env, json).await
        }
        Commands::Repo { command } => match command {
            Some(RepoCommand::Add {
                name,
                url,
                pipeline,
                branches,
                poll,
                secret_file,
                credentials,
            }) => {
                let new = commands::repos::NewRepository {
                    name,
                    url,
                    pipeline: Some(pipeline),
                    branches,
                    poll,
                    secret_file,
                    credentials,
                };
                commands::repos::add(&mut client, new, json).await
            }
            Some(RepoCommand::List) | None => commands::repos::list(&mut client, None, json).await,
            Some(RepoCommand::Show { name }) => {
                commands::repos::list(&mut client, Some(name), json).await
            }
            Some(RepoCommand::Remove { name }) => {
                commands::repos::remove(&mut client, name, json).await
            }
        },
        Commands::Env { command } => match command {
            Some(EnvCommand::Create {
                name,
                approval,
                default,
                env,
            }) => {
                let new = commands::environments::NewEnvironment {
                    name,
                    approval: approval == "required",
                    default,
                    env,
                };
                commands::environments::create(&mut client, new, json).await
            }
            Some(EnvCommand::List) | None => commands::environments::list(&mut client, json).await,
        },
        Commands::Gateway { listen, hold_secs } => {
            commands::services::gateway(
                cli.addr.clone(),
                credentials.tls.clone(),
                &listen,
                Duration::from_secs(hold_secs),
            )
            .await
        }
        Commands::Cluster(c) => match c {
            ClusterCommand::Status { state_hash } => {
                commands::cluster::status(&mut client, state_hash, json).await
            }
            ClusterCommand::Join { id, member_addr } => {
                commands::cluster::join(&mut client, id, member_addr, json).await
            }
            ClusterCommand::Leave { id } => commands::cluster::leave(&mut client, id, json).await,
        },
    }
}
