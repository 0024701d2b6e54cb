//! The `berth` CLI verbs (ecs-cli's, plus a few): each talks to the ECS API
//! through `berth-client`, prints aligned tables (or `--output json|yaml`),
//! and ends with one of the documented exit codes. One file per verb group.

mod cluster;
mod compose;
mod events;
pub mod lb;
mod output;
mod service;
mod taskdef;
mod tasks;
mod wait;

use anyhow::Context;
use berth_client::{Client, ClientError, Overrides, Settings};
use serde_json::{Value, json};

pub use output::Format;

/// The exit codes, as shown in `berth --help` and docs/cli.md.
pub const EXIT_CODES_HELP: &str = "\
CLI exit codes:
  0  success
  1  the API refused or failed the request (error line names the ECS error type)
  2  usage error, or an input file (compose, task definition, config) is invalid
  3  not found (cluster, service, task, instance or task definition)
  4  authentication or authorization failed (keys, signature, allowed operations)
  5  the server cannot be reached at the endpoint
  6  --wait gave up: not steady before the deadline
  7  not available yet: the server lacks the Berth extension the verb needs

Connection settings, highest precedence first: --endpoint/--profile/--region/--cluster,
then BERTH_ENDPOINT, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_REGION,
BERTH_CLUSTER, then the config file ($BERTH_CONFIG or CONFIG_DIR/berth/config.toml).";

pub mod exit {
    pub const API: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const AUTH: i32 = 4;
    pub const UNREACHABLE: i32 = 5;
    pub const TIMEOUT: i32 = 6;
    pub const UNAVAILABLE: i32 = 7;
}

/// Options every CLI verb takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// ECS API endpoint, e.g. http://127.0.0.1:8080 [env: BERTH_ENDPOINT]
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// Profile of the AWS shared-credentials file to sign with [env: AWS_PROFILE]
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Region for the signature scope [env: AWS_REGION]
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Cluster to act on (default: `default`) [env: BERTH_CLUSTER]
    #[arg(long, short = 'c', global = true)]
    pub cluster: Option<String>,
    /// Extra CA certificate(s), PEM, for an https:// endpoint with a private
    /// or self-signed certificate [env: BERTH_CA_CERT]
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Output format: aligned table, or json/yaml for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
}

impl Common {
    pub fn client(&self) -> anyhow::Result<Client> {
        let settings = Settings::from_env(&Overrides {
            endpoint: self.endpoint.clone(),
            profile: self.profile.clone(),
            region: self.region.clone(),
            cluster: self.cluster.clone(),
        })?;
        match &self.ca_cert {
            Some(ca) => Ok(Client::with_ca_cert(settings, Some(ca))?),
            None => Ok(Client::new(settings)?),
        }
    }
}

/// A failure with its own exit code and an optional hint.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

pub fn fail(code: i32, message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
    anyhow::Error::new(Fail {
        code,
        message: message.into(),
        hint: hint.map(str::to_string),
    })
}

/// The CLI verbs, flattened into `berth`'s top-level commands.
#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Clusters: create (up), delete (down), list (ls), describe.
    Cluster(cluster::ClusterArgs),
    /// Container instances of a cluster: resources used and free, status, attributes.
    Instances(cluster::InstancesArgs),
    /// Drain a container instance (no new tasks; service tasks move away).
    Drain(cluster::DrainArgs),
    /// Run one-off tasks of a task definition (or of an image, registering one).
    Run(tasks::RunArgs),
    /// List tasks of a cluster.
    Ps(tasks::PsArgs),
    /// Stop a task.
    Stop(tasks::StopArgs),
    /// Print a task's logs (needs the server's logs extension).
    Logs(tasks::LogsArgs),
    /// Explain a task's state: why it is pending, where it runs, why it stopped.
    Explain(tasks::ExplainArgs),
    /// Watch the cluster's events (needs the server's events stream extension).
    Events(events::EventsArgs),
    /// Task definitions: register from JSON/YAML, list, describe.
    Taskdef(taskdef::TaskdefArgs),
    /// Services: create, update, scale, rm, ls, describe, plan.
    Service(service::ServiceArgs),
    /// Load balancer target groups: create, ls, rm.
    Targetgroup(lb::TargetGroupArgs),
    /// The targets of a target group: address, task, state, health, in-flight.
    Targets(lb::TargetsArgs),
    /// docker-compose files as task definitions and services (ecs-cli compose).
    Compose(compose::ComposeArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  berth completions bash > /etc/bash_completion.d/berth\n  berth completions zsh > \"${fpath[1]}/_berth\"\n  berth completions fish > ~/.config/fish/completions/berth.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs a verb and exits the process with its code (0 on success).
pub async fn run(verb: Verb) -> anyhow::Result<()> {
    let result = match verb {
        Verb::Cluster(a) => cluster::cluster(a).await,
        Verb::Instances(a) => cluster::instances(a).await,
        Verb::Drain(a) => cluster::drain(a).await,
        Verb::Run(a) => tasks::run(a).await,
        Verb::Ps(a) => tasks::ps(a).await,
        Verb::Stop(a) => tasks::stop(a).await,
        Verb::Logs(a) => tasks::logs(a).await,
        Verb::Explain(a) => tasks::explain(a).await,
        Verb::Events(a) => events::events(a).await,
        Verb::Taskdef(a) => taskdef::taskdef(a).await,
        Verb::Service(a) => service::service(a).await,
        Verb::Targetgroup(a) => lb::targetgroup(a).await,
        Verb::Targets(a) => lb::targets(a).await,
        Verb::Compose(a) => compose::compose(a).await,
        Verb::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = crate::Cli::command();
            clap_complete::generate(shell, &mut cmd, "berth", &mut std::io::stdout());
            Ok(())
        }
    };
    finish(result)
}

/// Ends a verb: prints the error with its hint and exits with its code.
pub fn finish(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let (code, line) = describe_error(&e);
            eprintln!("error: {}", line.replace('\n', " "));
            std::process::exit(code);
        }
    }
}

fn hint_for_api(kind: &str, message: &str) -> Option<&'static str> {
    Some(match kind {
        "ClusterNotFoundException" => "create it with `berth cluster up -c NAME`, or see `berth cluster ls`",
        "ServiceNotFoundException" | "ServiceNotActiveException" => "see `berth service ls`",
        "ClusterContainsServicesException" | "ClusterContainsTasksException" => {
            "`berth cluster down --force` removes services and stops tasks first"
        }
        "ClusterContainsContainerInstancesException" => "`berth cluster down --force` deregisters the instances first",
        "UnrecognizedClientException" | "InvalidSignatureException" | "IncompleteSignatureException" => {
            "check --profile / AWS_ACCESS_KEY_ID against the server's --credentials file"
        }
        "AccessDeniedException" => "the key's berth_allowed_operations does not include this operation",
        "InvalidParameterException" if message.contains("TaskDefinition not found") => {
            "see `berth taskdef ls`, or pass --image to register one"
        }
        "InvalidParameterException" if message.contains("referenced task was not found") => "see `berth ps --all`",
        "InvalidParameterException" => "the message names the member that is wrong",
        _ => return None,
    })
}

/// The exit code and the one-line message of an error.
fn describe_error(e: &anyhow::Error) -> (i32, String) {
    if let Some(f) = e.downcast_ref::<Fail>() {
        let line = match &f.hint {
            Some(h) => format!("{} (hint: {h})", f.message),
            None => f.message.clone(),
        };
        return (f.code, line);
    }
    if let Some(c) = e.downcast_ref::<ClientError>() {
        let context = e.chain().next().map(|x| x.to_string()).filter(|s| *s != c.to_string());
        let prefix = context.map(|s| format!("{s}: ")).unwrap_or_default();
        return match c {
            ClientError::Api { kind, message, .. } => {
                let code = if matches!(
                    kind.as_str(),
                    "UnrecognizedClientException"
                        | "InvalidSignatureException"
                        | "IncompleteSignatureException"
                        | "AccessDeniedException"
                        | "MissingAuthenticationTokenException"
                ) {
                    exit::AUTH
                } else if kind.ends_with("NotFoundException")
                    || message.to_ascii_lowercase().contains("not found")
                    || message.contains("Unable to describe task definition")
                {
                    exit::NOT_FOUND
                } else {
                    exit::API
                };
                let hint = hint_for_api(kind, message)
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default();
                (code, format!("{prefix}{kind}: {message}{hint}"))
            }
            ClientError::Connect { .. } => (
                exit::UNREACHABLE,
                format!("{prefix}{c} (hint: is `berth server` running there? set --endpoint or BERTH_ENDPOINT)"),
            ),
            ClientError::Protocol { .. } => (exit::API, format!("{prefix}{c}")),
            ClientError::NotAvailable { .. } => (exit::UNAVAILABLE, format!("{prefix}{c}")),
            ClientError::Settings(_) => (exit::USAGE, format!("{prefix}{c}")),
            ClientError::Input { .. } => (exit::USAGE, format!("{prefix}{c}")),
        };
    }
    let chain: Vec<String> = e.chain().map(|x| x.to_string()).collect();
    (exit::API, chain.join(": "))
}

/// The last path segment of an ARN (`.../task/c/ID` → `ID`).
pub fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The short name of a task definition ARN (`family:revision`).
pub fn taskdef_short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

pub fn n(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

/// DescribeTasks over any number of task ids/ARNs (batches of 100).
pub async fn describe_tasks(
    client: &Client,
    cluster: &str,
    tasks: &[String],
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let (mut out, mut failures) = (Vec::new(), Vec::new());
    for chunk in tasks.chunks(100) {
        let r = client
            .call("DescribeTasks", &json!({"cluster": cluster, "tasks": chunk}))
            .await?;
        out.extend(r["tasks"].as_array().cloned().unwrap_or_default());
        failures.extend(r["failures"].as_array().cloned().unwrap_or_default());
    }
    Ok((out, failures))
}

/// Reads a file for a verb, naming it on failure (exit code 2).
pub fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(|e| fail(exit::USAGE, format!("{e:#}"), None))
}
