//! `berth cluster up|down|ls|describe`, `berth instances`, `berth drain`.

use serde_json::{Value, json};

use super::output::{Table, emit, emit_text, kv};
use super::{Common, exit, fail, n, s, short};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth cluster up -c dev\n  berth cluster ls -o json\n  berth cluster describe dev\n  berth cluster down dev --force"
)]
pub struct ClusterArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCmd {
    /// Create the cluster (idempotent), ready for agents to join.
    #[command(after_help = "Example:\n  berth cluster up dev")]
    Up {
        /// Cluster name (else --cluster, else `default`).
        name: Option<String>,
    },
    /// Delete the cluster.
    #[command(after_help = "Example:\n  berth cluster down dev --force")]
    Down {
        name: Option<String>,
        /// First delete its services, stop its tasks and deregister its instances.
        #[arg(long)]
        force: bool,
    },
    /// List clusters with their counts.
    #[command(after_help = "Example:\n  berth cluster ls")]
    Ls,
    /// Show one cluster.
    #[command(after_help = "Example:\n  berth cluster describe dev -o yaml")]
    Describe { name: Option<String> },
}

fn cluster_table(clusters: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "STATUS", "INSTANCES", "RUNNING", "PENDING", "SERVICES"]);
    for c in clusters {
        t.row(vec![
            s(c, "clusterName").into(),
            s(c, "status").into(),
            n(c, "registeredContainerInstancesCount").to_string(),
            n(c, "runningTasksCount").to_string(),
            n(c, "pendingTasksCount").to_string(),
            n(c, "activeServicesCount").to_string(),
        ]);
    }
    t
}

pub async fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let fmt = a.common.output;
    let pick = |name: Option<String>| name.unwrap_or_else(|| client.cluster().to_string());
    match a.cmd {
        ClusterCmd::Up { name } => {
            let name = pick(name);
            let r = client.call("CreateCluster", &json!({"clusterName": name})).await?;
            let c = &r["cluster"];
            emit(fmt, c, &cluster_table(std::slice::from_ref(c)));
        }
        ClusterCmd::Down { name, force } => {
            let name = pick(name);
            if force {
                force_empty(&client, &name).await?;
            }
            let r = client.call("DeleteCluster", &json!({"cluster": name})).await?;
            emit_text(fmt, &r["cluster"], &format!("cluster {name} deleted"));
        }
        ClusterCmd::Ls => {
            let arns = client.call_all("ListClusters", &json!({}), "clusterArns").await?;
            let mut clusters = Vec::new();
            for chunk in arns.chunks(100) {
                let r = client.call("DescribeClusters", &json!({"clusters": chunk})).await?;
                clusters.extend(r["clusters"].as_array().cloned().unwrap_or_default());
            }
            emit(fmt, &Value::Array(clusters.clone()), &cluster_table(&clusters));
        }
        ClusterCmd::Describe { name } => {
            let name = pick(name);
            let r = client
                .call(
                    "DescribeClusters",
                    &json!({"clusters": [name], "include": ["SETTINGS", "STATISTICS", "TAGS"]}),
                )
                .await?;
            let Some(c) = r["clusters"].as_array().and_then(|a| a.first()).cloned() else {
                return Err(fail(
                    exit::NOT_FOUND,
                    format!("ClusterNotFoundException: cluster '{name}' not found"),
                    Some("create it with `berth cluster up`, or see `berth cluster ls`"),
                ));
            };
            let text = kv(&[
                ("name", s(&c, "clusterName").into()),
                ("arn", s(&c, "clusterArn").into()),
                ("status", s(&c, "status").into()),
                ("instances", n(&c, "registeredContainerInstancesCount").to_string()),
                ("running tasks", n(&c, "runningTasksCount").to_string()),
                ("pending tasks", n(&c, "pendingTasksCount").to_string()),
                ("services", n(&c, "activeServicesCount").to_string()),
            ]);
            emit_text(fmt, &c, &text);
        }
    }
    Ok(())
}

/// Deletes services, stops tasks and deregisters instances of `cluster`.
async fn force_empty(client: &berth_client::Client, cluster: &str) -> anyhow::Result<()> {
    for arn in client
        .call_all("ListServices", &json!({"cluster": cluster}), "serviceArns")
        .await?
    {
        client
            .call(
                "DeleteService",
                &json!({"cluster": cluster, "service": arn, "force": true}),
            )
            .await?;
    }
    for arn in client
        .call_all("ListTasks", &json!({"cluster": cluster}), "taskArns")
        .await?
    {
        client
            .call(
                "StopTask",
                &json!({"cluster": cluster, "task": arn, "reason": "berth cluster down --force"}),
            )
            .await?;
    }
    for arn in client
        .call_all(
            "ListContainerInstances",
            &json!({"cluster": cluster}),
            "containerInstanceArns",
        )
        .await?
    {
        client
            .call(
                "DeregisterContainerInstance",
                &json!({"cluster": cluster, "containerInstance": arn, "force": true}),
            )
            .await?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berth instances -c dev\n  berth instances -o json | jq '.[].remainingResources'")]
pub struct InstancesArgs {
    #[command(flatten)]
    common: Common,
}

fn resource(list: &Value, name: &str) -> i64 {
    list.as_array()
        .and_then(|a| a.iter().find(|r| s(r, "name") == name))
        .map_or(0, |r| n(r, "integerValue"))
}

pub async fn instances(a: InstancesArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let cluster = client.cluster().to_string();
    let arns = client
        .call_all(
            "ListContainerInstances",
            &json!({"cluster": cluster}),
            "containerInstanceArns",
        )
        .await?;
    let mut all = Vec::new();
    for chunk in arns.chunks(100) {
        let r = client
            .call(
                "DescribeContainerInstances",
                &json!({"cluster": cluster, "containerInstances": chunk}),
            )
            .await?;
        all.extend(r["containerInstances"].as_array().cloned().unwrap_or_default());
    }
    let mut t = Table::new(&[
        "INSTANCE",
        "STATUS",
        "AGENT",
        "CPU USED/TOTAL",
        "CPU FREE",
        "MEM USED/TOTAL",
        "MEM FREE",
        "RUNNING",
        "PENDING",
        "ATTRIBUTES",
    ]);
    for ci in &all {
        let (cpu_t, cpu_f) = (
            resource(&ci["registeredResources"], "CPU"),
            resource(&ci["remainingResources"], "CPU"),
        );
        let (mem_t, mem_f) = (
            resource(&ci["registeredResources"], "MEMORY"),
            resource(&ci["remainingResources"], "MEMORY"),
        );
        let attrs: Vec<String> = ci["attributes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| {
                        !s(x, "name").starts_with("ecs.capability") && !s(x, "name").starts_with("com.amazonaws")
                    })
                    .map(|x| match x.get("value").and_then(Value::as_str) {
                        Some(v) => format!("{}={v}", s(x, "name")),
                        None => s(x, "name").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        t.row(vec![
            short(s(ci, "containerInstanceArn")).into(),
            s(ci, "status").into(),
            if ci["agentConnected"].as_bool().unwrap_or(false) {
                "connected"
            } else {
                "-"
            }
            .into(),
            format!("{}/{}", cpu_t - cpu_f, cpu_t),
            cpu_f.to_string(),
            format!("{}/{}", mem_t - mem_f, mem_t),
            mem_f.to_string(),
            n(ci, "runningTasksCount").to_string(),
            n(ci, "pendingTasksCount").to_string(),
            attrs.join(","),
        ]);
    }
    emit(a.common.output, &Value::Array(all), &t);
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berth drain 4f1c2d... -c dev\n  berth drain 4f1c2d... --undo")]
pub struct DrainArgs {
    #[command(flatten)]
    common: Common,
    /// Container instance id or ARN.
    instance: String,
    /// Make the instance ACTIVE again.
    #[arg(long)]
    undo: bool,
}

pub async fn drain(a: DrainArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let status = if a.undo { "ACTIVE" } else { "DRAINING" };
    let r = client
        .call(
            "UpdateContainerInstancesState",
            &json!({"cluster": client.cluster(), "containerInstances": [a.instance], "status": status}),
        )
        .await?;
    if let Some(f) = r["failures"].as_array().and_then(|f| f.first()) {
        return Err(fail(
            exit::NOT_FOUND,
            format!("container instance {}: {}", a.instance, s(f, "reason")),
            Some("see `berth instances`"),
        ));
    }
    let ci = r["containerInstances"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(Value::Null);
    emit_text(
        a.common.output,
        &ci,
        &format!(
            "instance {} is {}",
            short(s(&ci, "containerInstanceArn")),
            s(&ci, "status")
        ),
    );
    Ok(())
}
