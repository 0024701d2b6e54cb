//! `berth service create|update|scale|rm|ls|describe|plan`.

use std::time::Duration;

use berth_client::Client;
use serde_json::{Value, json};

use super::output::{Format, Table, emit, emit_text, emit_value, kv};
use super::wait::{parse_timeout, steady};
use super::{Common, exit, fail, n, s, taskdef_short};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth service create web --taskdef web:3 --count 2 --wait\n  berth service scale web 5 --wait --timeout 2m\n  berth service update web --taskdef web:4\n  berth service ls\n  berth service rm web --force"
)]
pub struct ServiceArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: ServiceCmd,
}

/// `--wait` and its deadline.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Block until steady (running == desired, one deployment), with a progress bar.
    #[arg(long)]
    pub wait: bool,
    /// Deadline for --wait (e.g. 90s, 5m); exit code 6 when it passes.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum ServiceCmd {
    /// Create a service that keeps COUNT tasks of a task definition running.
    #[command(after_help = "Example:\n  berth service create web --taskdef web:3 --count 2 --wait")]
    Create {
        name: String,
        /// Task definition: FAMILY, FAMILY:REVISION or ARN.
        #[arg(long)]
        taskdef: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Register the tasks in this load balancer target group (name or ARN).
        #[arg(long, requires = "container_port")]
        target_group: Option<String>,
        /// The container port the target group sends traffic to.
        #[arg(long, requires = "target_group")]
        container_port: Option<u16>,
        /// The container with that port (default: the one that maps it).
        #[arg(long, requires = "target_group")]
        container_name: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a service's task definition and/or count (starts a deployment).
    #[command(after_help = "Example:\n  berth service update web --taskdef web:4 --wait")]
    Update {
        name: String,
        #[arg(long)]
        taskdef: Option<String>,
        #[arg(long)]
        count: Option<u32>,
        /// Start a new deployment even when nothing changed.
        #[arg(long)]
        force_new_deployment: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set a service's desired count.
    #[command(after_help = "Example:\n  berth service scale web 5 --wait")]
    Scale {
        name: String,
        count: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a service (--force: even while it has tasks; they are stopped).
    #[command(after_help = "Example:\n  berth service rm web --force")]
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// List services with their counts.
    #[command(after_help = "Example:\n  berth service ls -c dev")]
    Ls,
    /// Show a service and its deployments.
    #[command(after_help = "Example:\n  berth service describe web -o yaml")]
    Describe { name: String },
    /// Show what the scheduler would do for a change (needs the server's plan extension).
    #[command(after_help = "Example:\n  berth service plan web --count 10")]
    Plan {
        name: String,
        #[arg(long)]
        taskdef: Option<String>,
        #[arg(long)]
        count: Option<u32>,
    },
}

/// The Berth extension `berth service plan` calls.
pub const PLAN_PATH: &str = "/v1/services/plan";

pub fn service_table(svcs: &[Value]) -> Table {
    let mut t = Table::new(&[
        "SERVICE",
        "STATUS",
        "TASKDEF",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "DEPLOYMENTS",
    ]);
    for v in svcs {
        t.row(vec![
            s(v, "serviceName").into(),
            s(v, "status").into(),
            taskdef_short(s(v, "taskDefinition")).into(),
            n(v, "desiredCount").to_string(),
            n(v, "runningCount").to_string(),
            n(v, "pendingCount").to_string(),
            v["deployments"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    t
}

fn describe_text(v: &Value) -> String {
    let mut text = kv(&[
        ("service", s(v, "serviceName").into()),
        ("arn", s(v, "serviceArn").into()),
        ("status", s(v, "status").into()),
        ("task definition", taskdef_short(s(v, "taskDefinition")).into()),
        (
            "tasks",
            format!(
                "{} desired, {} running, {} pending",
                n(v, "desiredCount"),
                n(v, "runningCount"),
                n(v, "pendingCount")
            ),
        ),
    ]);
    text.push_str("\ndeployments:");
    for d in v["deployments"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "\n  {} {} {} {}/{} running ({})",
            s(d, "id"),
            s(d, "status"),
            taskdef_short(s(d, "taskDefinition")),
            n(d, "runningCount"),
            n(d, "desiredCount"),
            s(d, "rolloutState")
        ));
    }
    text
}

/// Prints a service after a mutation, first waiting for it when asked.
pub async fn after_change(client: &Client, fmt: Format, svc: &Value, wait: &WaitArgs) -> anyhow::Result<()> {
    let svc = if wait.wait {
        steady(client, client.cluster(), s(svc, "serviceName"), wait.timeout).await?
    } else {
        svc.clone()
    };
    emit(fmt, &svc, &service_table(std::slice::from_ref(&svc)));
    Ok(())
}

/// DescribeServices for one name: the ACTIVE/DRAINING service, or None.
pub async fn find(client: &Client, name: &str) -> anyhow::Result<Option<Value>> {
    let r = client
        .call(
            "DescribeServices",
            &json!({"cluster": client.cluster(), "services": [name]}),
        )
        .await?;
    Ok(r["services"]
        .as_array()
        .and_then(|a| a.first())
        .filter(|v| s(v, "status") != "INACTIVE")
        .cloned())
}

pub async fn service(a: ServiceArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let fmt = a.common.output;
    let cluster = client.cluster().to_string();
    match a.cmd {
        ServiceCmd::Create {
            name,
            taskdef,
            count,
            target_group,
            container_port,
            container_name,
            wait,
        } => {
            let mut body =
                json!({"cluster": cluster, "serviceName": name, "taskDefinition": taskdef, "desiredCount": count});
            if let (Some(g), Some(port)) = (target_group, container_port) {
                let cname = match container_name {
                    Some(c) => c,
                    None => super::lb::container_for_port(&client, &taskdef, port).await?,
                };
                body["loadBalancers"] = json!([{"targetGroupArn": g, "containerName": cname, "containerPort": port}]);
            }
            let r = client.call("CreateService", &body).await?;
            after_change(&client, fmt, &r["service"], &wait).await?;
        }
        ServiceCmd::Update {
            name,
            taskdef,
            count,
            force_new_deployment,
            wait,
        } => {
            let mut body = json!({"cluster": cluster, "service": name});
            if let Some(t) = taskdef {
                body["taskDefinition"] = json!(t);
            }
            if let Some(c) = count {
                body["desiredCount"] = json!(c);
            }
            if force_new_deployment {
                body["forceNewDeployment"] = json!(true);
            }
            let r = client.call("UpdateService", &body).await?;
            after_change(&client, fmt, &r["service"], &wait).await?;
        }
        ServiceCmd::Scale { name, count, wait } => {
            let r = client
                .call(
                    "UpdateService",
                    &json!({"cluster": cluster, "service": name, "desiredCount": count}),
                )
                .await?;
            after_change(&client, fmt, &r["service"], &wait).await?;
        }
        ServiceCmd::Rm { name, force } => {
            let r = client
                .call(
                    "DeleteService",
                    &json!({"cluster": cluster, "service": name, "force": force}),
                )
                .await?;
            emit_text(fmt, &r["service"], &format!("service {name} deleted"));
        }
        ServiceCmd::Ls => {
            let arns = client
                .call_all("ListServices", &json!({"cluster": cluster}), "serviceArns")
                .await?;
            let mut svcs = Vec::new();
            for chunk in arns.chunks(10) {
                let r = client
                    .call("DescribeServices", &json!({"cluster": cluster, "services": chunk}))
                    .await?;
                svcs.extend(r["services"].as_array().cloned().unwrap_or_default());
            }
            emit(fmt, &Value::Array(svcs.clone()), &service_table(&svcs));
        }
        ServiceCmd::Describe { name } => {
            // Unlike `find`, an INACTIVE (deleted) service is still shown.
            let r = client
                .call("DescribeServices", &json!({"cluster": cluster, "services": [name]}))
                .await?;
            let Some(v) = r["services"].as_array().and_then(|a| a.first()).cloned() else {
                return Err(fail(
                    exit::NOT_FOUND,
                    format!("ServiceNotFoundException: service {name} not found in cluster {cluster}"),
                    Some("see `berth service ls`"),
                ));
            };
            emit_text(fmt, &v, &describe_text(&v));
        }
        ServiceCmd::Plan { name, taskdef, count } => {
            if find(&client, &name).await?.is_none() {
                return Err(fail(
                    exit::NOT_FOUND,
                    format!("ServiceNotFoundException: service {name} not found in cluster {cluster}"),
                    Some("see `berth service ls`"),
                ));
            }
            let mut body = json!({"cluster": cluster, "service": name});
            if let Some(t) = taskdef {
                body["taskDefinition"] = json!(t);
            }
            if let Some(c) = count {
                body["desiredCount"] = json!(c);
            }
            let r = client.extension(PLAN_PATH, "service plan extension", &body).await?;
            emit_value(if fmt == Format::Table { Format::Yaml } else { fmt }, &r);
        }
    }
    Ok(())
}
