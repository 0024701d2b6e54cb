//! `berth compose [-f FILE] [-p PROJECT] up | service up|scale|ps|stop|rm`:
//! ecs-cli's compose verbs. The project is one task definition (family =
//! project) and, for `service`, one ECS service of the same name.

use std::path::{Path, PathBuf};

use berth_client::Client;
use berth_client::compose::{Translation, translate};
use serde_json::json;

use super::service::{WaitArgs, after_change, find};
use super::tasks::{list_tasks, report_started, task_table};
use super::{Common, exit, fail, read_file, s, taskdef_short};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth compose up                       # one-off tasks of ./docker-compose.yml\n  berth compose -f app.yml -p shop service up --wait\n  berth compose service scale 4 --wait\n  berth compose service ps\n  berth compose service rm"
)]
pub struct ComposeArgs {
    #[command(flatten)]
    common: Common,
    /// The compose file.
    #[arg(long, short = 'f', default_value = "docker-compose.yml", global = true)]
    file: PathBuf,
    /// Project name (task definition family and service name); default: the file's
    /// `name:`, else its directory's name.
    #[arg(long, short = 'p', global = true)]
    project: Option<String>,
    #[command(subcommand)]
    cmd: ComposeCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ComposeCmd {
    /// Register the project's task definition and run one task of it.
    #[command(after_help = "Example:\n  berth compose -f docker-compose.yml up")]
    Up,
    /// List the project's one-off tasks (those `compose up` started).
    #[command(after_help = "Example:\n  berth compose ps --all")]
    Ps {
        /// Include stopped tasks.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// The project as a long-running service.
    #[command(subcommand)]
    Service(ServiceCmd),
}

#[derive(Debug, clap::Subcommand)]
enum ServiceCmd {
    /// Register the task definition and create or update the service
    /// (desired count from deploy.replicas).
    #[command(after_help = "Example:\n  berth compose service up --wait")]
    Up {
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set the service's desired count.
    #[command(after_help = "Example:\n  berth compose service scale 3 --wait")]
    Scale {
        count: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the service's tasks.
    #[command(after_help = "Example:\n  berth compose service ps")]
    Ps,
    /// Scale the service to 0 (it stays defined).
    #[command(after_help = "Example:\n  berth compose service stop")]
    Stop,
    /// Scale to 0 and delete the service.
    #[command(after_help = "Example:\n  berth compose service rm")]
    Rm,
}

/// Reads and translates the compose file; warnings go to stderr.
fn load(file: &Path, project: Option<&str>) -> anyhow::Result<Translation> {
    let text = read_file(file)?;
    let dir = file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let default_project = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("default")
        .to_string();
    let read_env = |p: &str| std::fs::read_to_string(dir.join(p)).map_err(|e| e.to_string());
    let t = translate(&text, &file.display().to_string(), project, &default_project, &read_env)?;
    for w in &t.warnings {
        eprintln!("warning: {}: {w}", file.display());
    }
    Ok(t)
}

async fn register(client: &Client, t: &Translation) -> anyhow::Result<String> {
    let r = client.call("RegisterTaskDefinition", &t.task_definition).await?;
    let arn = s(&r["taskDefinition"], "taskDefinitionArn").to_string();
    eprintln!("registered {}", taskdef_short(&arn));
    Ok(arn)
}

pub async fn compose(a: ComposeArgs) -> anyhow::Result<()> {
    let fmt = a.common.output;
    let project_flag = a.project.as_deref();
    // Verbs that only need the project name still read the file for it,
    // unless -p names the project.
    let project = |client: &Client| -> anyhow::Result<String> {
        let _ = client;
        match project_flag {
            Some(p) => Ok(berth_client::compose::sanitize_project(p)),
            None => Ok(load(&a.file, None)?.project),
        }
    };
    match a.cmd {
        ComposeCmd::Up => {
            let t = load(&a.file, project_flag)?;
            let client = a.common.client()?;
            let arn = register(&client, &t).await?;
            let r = client
                .call(
                    "RunTask",
                    &json!({"cluster": client.cluster(), "taskDefinition": arn, "count": 1,
                            "startedBy": format!("compose/{}", t.project)}),
                )
                .await?;
            report_started(fmt, &r)?;
        }
        ComposeCmd::Ps { all } => {
            let client = a.common.client()?;
            let name = project(&client)?;
            let started_by = format!("compose/{name}");
            let tasks = list_tasks(&client, client.cluster(), all, Some(("startedBy", &started_by))).await?;
            super::output::emit(fmt, &serde_json::Value::Array(tasks.clone()), &task_table(&tasks));
        }
        ComposeCmd::Service(ServiceCmd::Up { wait }) => {
            let t = load(&a.file, project_flag)?;
            let client = a.common.client()?;
            let arn = register(&client, &t).await?;
            let r = match find(&client, &t.project).await? {
                Some(_) => {
                    client
                        .call(
                            "UpdateService",
                            &json!({"cluster": client.cluster(), "service": t.project, "taskDefinition": arn,
                                    "desiredCount": t.replicas}),
                        )
                        .await?
                }
                None => {
                    client
                        .call(
                            "CreateService",
                            &json!({"cluster": client.cluster(), "serviceName": t.project, "taskDefinition": arn,
                                    "desiredCount": t.replicas}),
                        )
                        .await?
                }
            };
            after_change(&client, fmt, &r["service"], &wait).await?;
        }
        ComposeCmd::Service(ServiceCmd::Scale { count, wait }) => {
            let client = a.common.client()?;
            let name = project(&client)?;
            let r = client
                .call(
                    "UpdateService",
                    &json!({"cluster": client.cluster(), "service": name, "desiredCount": count}),
                )
                .await?;
            after_change(&client, fmt, &r["service"], &wait).await?;
        }
        ComposeCmd::Service(ServiceCmd::Ps) => {
            let client = a.common.client()?;
            let name = project(&client)?;
            if find(&client, &name).await?.is_none() {
                return Err(fail(
                    exit::NOT_FOUND,
                    format!(
                        "ServiceNotFoundException: no service {name} in cluster {}",
                        client.cluster()
                    ),
                    Some("create it with `berth compose service up`"),
                ));
            }
            let tasks = list_tasks(&client, client.cluster(), false, Some(("serviceName", &name))).await?;
            super::output::emit(fmt, &serde_json::Value::Array(tasks.clone()), &task_table(&tasks));
        }
        ComposeCmd::Service(ServiceCmd::Stop) => {
            let client = a.common.client()?;
            let name = project(&client)?;
            let r = client
                .call(
                    "UpdateService",
                    &json!({"cluster": client.cluster(), "service": name, "desiredCount": 0}),
                )
                .await?;
            after_change(
                &client,
                fmt,
                &r["service"],
                &WaitArgs {
                    wait: false,
                    timeout: Default::default(),
                },
            )
            .await?;
        }
        ComposeCmd::Service(ServiceCmd::Rm) => {
            let client = a.common.client()?;
            let name = project(&client)?;
            let r = client
                .call(
                    "DeleteService",
                    &json!({"cluster": client.cluster(), "service": name, "force": true}),
                )
                .await?;
            super::output::emit_text(fmt, &r["service"], &format!("service {name} deleted"));
        }
    }
    Ok(())
}
