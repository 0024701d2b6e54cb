//! `berth run`, `ps`, `stop`, `logs`, `explain`.

use berth_client::Client;
use serde_json::{Value, json};

use super::output::{Format, Table, emit, emit_text, emit_value};
use super::{Common, describe_tasks, exit, fail, s, short, taskdef_short};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth run web:3 --count 2\n  berth run hello --image busybox --cmd 'sh -c \"echo hi; sleep 60\"' --env GREETING=hi\n  berth run api --image ghcr.io/acme/api:1 --port 8080 --memory 256"
)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Task definition: FAMILY, FAMILY:REVISION or ARN (with --image: the family to register).
    taskdef: String,
    /// How many tasks to start (1 to 10).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Command for the (first) container, split like a shell would.
    #[arg(long = "cmd", allow_hyphen_values = true)]
    cmd: Option<String>,
    /// Environment variable for the (first) container; repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Register a one-off task definition with this image first.
    #[arg(long)]
    image: Option<String>,
    /// With --image: a host port to map (HOST or HOST:CONTAINER); repeatable.
    #[arg(long = "port")]
    port: Vec<String>,
    /// With --image: CPU units (1024 = one core).
    #[arg(long, default_value_t = 0)]
    cpu: u32,
    /// With --image: memory limit in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Value of the task's startedBy.
    #[arg(long)]
    started_by: Option<String>,
}

fn env_pairs(env: &[String]) -> anyhow::Result<Vec<Value>> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(json!({"name": k, "value": v})),
            _ => Err(fail(exit::USAGE, format!("--env {kv}: expected KEY=VALUE"), None)),
        })
        .collect()
}

fn port_mapping(p: &str) -> anyhow::Result<Value> {
    let bad = || {
        fail(
            exit::USAGE,
            format!("--port {p}: expected HOST or HOST:CONTAINER (1-65535)"),
            None,
        )
    };
    let parse = |x: &str| x.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(bad);
    let (host, container) = match p.split_once(':') {
        Some((h, c)) => (parse(h)?, parse(c)?),
        None => (parse(p)?, parse(p)?),
    };
    Ok(json!({"containerPort": container, "hostPort": host, "protocol": "tcp"}))
}

/// Prints started tasks and failures; an error when nothing started.
pub fn report_started(fmt: Format, r: &Value) -> anyhow::Result<()> {
    let tasks = r["tasks"].as_array().cloned().unwrap_or_default();
    let failures = r["failures"].as_array().cloned().unwrap_or_default();
    let reasons: Vec<String> = failures
        .iter()
        .map(|f| match s(f, "reason") {
            "MISSING" if s(f, "arn").contains(":cluster/") => "no container instances in the cluster".to_string(),
            r => format!("{r} ({})", gloss(r).unwrap_or(short(s(f, "arn")))),
        })
        .collect();
    if tasks.is_empty() && !failures.is_empty() {
        return Err(fail(
            exit::API,
            format!("no task was started: {}", reasons.join("; ")),
            Some("see `berth instances` for free resources"),
        ));
    }
    for r in &reasons {
        eprintln!("warning: {r}");
    }
    emit(fmt, &Value::Array(tasks.clone()), &task_table(&tasks));
    Ok(())
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    if !(1..=10).contains(&a.count) {
        return Err(fail(exit::USAGE, "--count must be between 1 and 10", None));
    }
    let command = match &a.cmd {
        Some(c) => {
            Some(berth_client::compose::split_words(c).map_err(|e| fail(exit::USAGE, format!("--cmd: {e}"), None))?)
        }
        None => None,
    };
    let env = env_pairs(&a.env)?;
    let taskdef = if let Some(image) = &a.image {
        if a.taskdef.contains(':') {
            return Err(fail(
                exit::USAGE,
                "with --image, name a family without a revision",
                None,
            ));
        }
        let mut c = json!({"name": a.taskdef, "image": image, "essential": true, "memory": a.memory, "cpu": a.cpu});
        if let Some(cmd) = &command {
            c["command"] = json!(cmd);
        }
        if !env.is_empty() {
            c["environment"] = json!(env);
        }
        if !a.port.is_empty() {
            c["portMappings"] = Value::Array(a.port.iter().map(|p| port_mapping(p)).collect::<anyhow::Result<_>>()?);
        }
        let r = client
            .call(
                "RegisterTaskDefinition",
                &json!({"family": a.taskdef, "containerDefinitions": [c]}),
            )
            .await?;
        let arn = s(&r["taskDefinition"], "taskDefinitionArn").to_string();
        eprintln!("registered {}", taskdef_short(&arn));
        arn
    } else {
        if !a.port.is_empty() {
            return Err(fail(
                exit::USAGE,
                "--port needs --image: ports belong to the task definition",
                Some("edit the task definition and `berth taskdef register` it"),
            ));
        }
        a.taskdef.clone()
    };
    let mut body = json!({"cluster": client.cluster(), "taskDefinition": taskdef, "count": a.count});
    if let Some(sb) = &a.started_by {
        body["startedBy"] = json!(sb);
    }
    if a.image.is_none() && (command.is_some() || !env.is_empty()) {
        let td = client
            .call("DescribeTaskDefinition", &json!({"taskDefinition": taskdef}))
            .await?;
        let first = td["taskDefinition"]["containerDefinitions"]
            .as_array()
            .and_then(|c| c.first())
            .map(|c| s(c, "name").to_string())
            .unwrap_or_default();
        let mut o = json!({"name": first});
        if let Some(cmd) = &command {
            o["command"] = json!(cmd);
        }
        if !env.is_empty() {
            o["environment"] = json!(env);
        }
        body["overrides"] = json!({"containerOverrides": [o]});
    }
    let r = client.call("RunTask", &body).await?;
    report_started(a.common.output, &r)
}

fn ports(t: &Value) -> String {
    let mut out = Vec::new();
    for c in t["containers"].as_array().into_iter().flatten() {
        for b in c["networkBindings"].as_array().into_iter().flatten() {
            out.push(format!(
                "{}->{}/{}",
                b["hostPort"].as_i64().unwrap_or(0),
                b["containerPort"].as_i64().unwrap_or(0),
                b["protocol"].as_str().unwrap_or("tcp")
            ));
        }
    }
    out.join(",")
}

pub fn task_table(tasks: &[Value]) -> Table {
    let mut t = Table::new(&["TASK", "TASKDEF", "LAST", "DESIRED", "INSTANCE", "PORTS", "GROUP"]);
    for x in tasks {
        let instance = x.get("containerInstanceArn").and_then(Value::as_str).map_or("-", short);
        t.row(vec![
            short(s(x, "taskArn")).into(),
            taskdef_short(s(x, "taskDefinitionArn")).into(),
            s(x, "lastStatus").into(),
            s(x, "desiredStatus").into(),
            instance.into(),
            ports(x),
            s(x, "group").into(),
        ]);
    }
    t
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berth ps\n  berth ps --all -c dev\n  berth ps --service web -o json")]
pub struct PsArgs {
    #[command(flatten)]
    common: Common,
    /// Include stopped tasks.
    #[arg(long, short = 'a')]
    all: bool,
    /// Only the tasks of this service.
    #[arg(long)]
    service: Option<String>,
    /// Print task ids only, one a line (for scripts: `berth logs $(berth ps -q | head -1)`).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Tasks of `cluster` (RUNNING desired, plus STOPPED with `all`), with an
/// optional ListTasks filter (`serviceName`, `startedBy`).
pub async fn list_tasks(
    client: &Client,
    cluster: &str,
    all: bool,
    filter: Option<(&str, &str)>,
) -> anyhow::Result<Vec<Value>> {
    let mut arns = Vec::new();
    let statuses: &[&str] = if all { &["RUNNING", "STOPPED"] } else { &["RUNNING"] };
    for st in statuses {
        let mut body = json!({"cluster": cluster, "desiredStatus": st});
        if let Some((member, value)) = filter {
            body[member] = json!(value);
        }
        for a in client.call_all("ListTasks", &body, "taskArns").await? {
            if let Some(a) = a.as_str() {
                arns.push(a.to_string());
            }
        }
    }
    let (mut tasks, _) = describe_tasks(client, cluster, &arns).await?;
    tasks.sort_by(|a, b| {
        let k = |t: &Value| t["createdAt"].as_f64().unwrap_or(0.0);
        k(a).total_cmp(&k(b))
    });
    Ok(tasks)
}

pub async fn ps(a: PsArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let tasks = list_tasks(
        &client,
        client.cluster(),
        a.all,
        a.service.as_deref().map(|v| ("serviceName", v)),
    )
    .await?;
    if a.quiet {
        for t in &tasks {
            println!("{}", short(s(t, "taskArn")));
        }
        return Ok(());
    }
    emit(a.common.output, &Value::Array(tasks.clone()), &task_table(&tasks));
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth stop 0f3c9a...\n  berth stop arn:aws:ecs:us-east-1:000000000000:task/dev/0f3c9a... --reason 'bad deploy'"
)]
pub struct StopArgs {
    #[command(flatten)]
    common: Common,
    /// Task id or ARN.
    task: String,
    #[arg(long)]
    reason: Option<String>,
}

pub async fn stop(a: StopArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let mut body = json!({"cluster": client.cluster(), "task": a.task});
    if let Some(r) = &a.reason {
        body["reason"] = json!(r);
    }
    let r = client.call("StopTask", &body).await?;
    let t = &r["task"];
    emit_text(
        a.common.output,
        t,
        &format!(
            "task {} stopping (last status {})",
            short(s(t, "taskArn")),
            s(t, "lastStatus")
        ),
    );
    Ok(())
}

/// One task by id/ARN, or a not-found failure.
async fn one_task(client: &Client, task: &str) -> anyhow::Result<Value> {
    let (tasks, _) = describe_tasks(client, client.cluster(), &[task.to_string()]).await?;
    tasks.into_iter().next().ok_or_else(|| {
        fail(
            exit::NOT_FOUND,
            format!("task {task} not found in cluster {}", client.cluster()),
            Some("see `berth ps --all`"),
        )
    })
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berth logs 0f3c9a...\n  berth logs 0f3c9a... -f")]
pub struct LogsArgs {
    #[command(flatten)]
    common: Common,
    task: String,
    /// Keep printing new lines.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// The Berth extension `berth logs` calls first.
pub const LOGS_PATH: &str = "/v1/tasks/logs";

/// The instance attribute naming the host agent's metadata endpoint, whose
/// `/v1/tasks/{id}/containers/{name}/logs` serves captured output.
pub const METADATA_ATTRIBUTE: &str = "berth.metadata-endpoint";

pub async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let t = one_task(&client, &a.task).await?;
    let mut body = json!({"cluster": client.cluster(), "task": s(&t, "taskArn")});
    loop {
        let r = match client.extension(LOGS_PATH, "task logs endpoint", &body).await {
            Ok(r) => r,
            Err(berth_client::ClientError::NotAvailable { endpoint, .. }) => {
                return agent_logs(&client, &t, a.follow, a.common.output, &endpoint).await;
            }
            Err(e) => return Err(e.into()),
        };
        let events = r["events"].as_array().cloned().unwrap_or_default();
        if a.common.output == Format::Table {
            for e in &events {
                println!("{}", s(e, "message"));
            }
        } else {
            emit_value(a.common.output, &r);
        }
        match r.get("nextToken").and_then(Value::as_str) {
            Some(tok) if a.follow => body["nextToken"] = json!(tok),
            _ => return Ok(()),
        }
        if events.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Prints the lines of `text` after byte `from`; returns how many bytes
/// were printed. When following, only whole lines are printed (the rest
/// comes with the next poll), so a line written in two parts is not split.
fn print_new(text: &str, from: usize, whole_lines_only: bool, mut print: impl FnMut(&str)) -> usize {
    let new = text.get(from..).unwrap_or("");
    let upto = if whole_lines_only {
        new.rfind('\n').map_or(0, |p| p + 1)
    } else {
        new.len()
    };
    for l in new[..upto].lines() {
        print(l);
    }
    upto
}

/// Logs straight from the task's host agent, found through the instance's
/// `berth.metadata-endpoint` attribute. `-f` polls and prints what is new.
async fn agent_logs(client: &Client, t: &Value, follow: bool, fmt: Format, tried: &str) -> anyhow::Result<()> {
    let task_id = short(s(t, "taskArn")).to_string();
    let unavailable = |why: String| {
        fail(
            exit::UNAVAILABLE,
            format!("not available yet: this server has no task logs endpoint (tried {tried}), and {why}"),
            None,
        )
    };
    let Some(instance) = t.get("containerInstanceArn").and_then(Value::as_str) else {
        return Err(unavailable(format!("task {task_id} is not placed on an instance")));
    };
    let r = client
        .call(
            "DescribeContainerInstances",
            &json!({"cluster": client.cluster(), "containerInstances": [instance]}),
        )
        .await?;
    let endpoint = r["containerInstances"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|ci| ci["attributes"].as_array())
        .and_then(|attrs| attrs.iter().find(|x| s(x, "name") == METADATA_ATTRIBUTE))
        .map(|x| s(x, "value").trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        return Err(unavailable(format!(
            "instance {} does not advertise its agent's endpoint (attribute {METADATA_ATTRIBUTE})",
            short(instance)
        )));
    };
    let names: Vec<String> = t["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| s(c, "name").to_string())
        .collect();
    let mut printed: Vec<(usize, usize)> = vec![(0, 0); names.len()];
    loop {
        let mut all = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let url = format!("{endpoint}/v1/tasks/{task_id}/containers/{name}/logs");
            let v = berth_client::get_agent_json(&url, "container logs on the agent").await?;
            if fmt == Format::Table {
                let prefix = if names.len() > 1 {
                    format!("{name} | ")
                } else {
                    String::new()
                };
                let (out, err) = (s(&v, "stdout"), s(&v, "stderr"));
                printed[i].0 += print_new(out, printed[i].0, follow, |l| println!("{prefix}{l}"));
                printed[i].1 += print_new(err, printed[i].1, follow, |l| eprintln!("{prefix}{l}"));
            }
            all.insert(name.clone(), v);
        }
        if fmt != Format::Table {
            emit_value(fmt, &Value::Object(all));
            return Ok(());
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  berth explain 0f3c9a...\n  berth explain 0f3c9a... -o json")]
pub struct ExplainArgs {
    #[command(flatten)]
    common: Common,
    task: String,
}

/// What a placement reason code means.
fn gloss(reason: &str) -> Option<&'static str> {
    let code = reason.split_whitespace().next().unwrap_or(reason);
    Some(match code {
        "RESOURCE:PORTS" => "a host port it needs is already taken",
        "RESOURCE:MEMORY" => "not enough free memory",
        "RESOURCE:CPU" => "not enough free CPU",
        "RESOURCE:GPU" => "not enough free GPUs",
        "RESOURCE:ENI" | "RESOURCE:NETWORK" => "not enough network capacity",
        "DRAINING" => "the instance is draining",
        "AGENT" => "the instance's agent is disconnected",
        "ATTRIBUTE" => "a placement constraint excludes the instance",
        "DISTINCT_INSTANCE" => "the instance already runs a task of the group",
        _ => return None,
    })
}

/// A person's account of a task's state.
pub fn explain_text(t: &Value) -> String {
    let mut out = vec![format!(
        "task {} ({}) is {} (desired {})",
        short(s(t, "taskArn")),
        taskdef_short(s(t, "taskDefinitionArn")),
        s(t, "lastStatus"),
        s(t, "desiredStatus")
    )];
    let reasons: Vec<&str> = t["pendingReasons"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match (
        s(t, "lastStatus"),
        t.get("containerInstanceArn").and_then(Value::as_str),
    ) {
        ("STOPPED", _) => {
            out.push(format!("stopped: {} ({})", s(t, "stoppedReason"), s(t, "stopCode")));
            for c in t["containers"].as_array().into_iter().flatten() {
                let code = c.get("exitCode").map_or("-".to_string(), Value::to_string);
                out.push(format!(
                    "  container {}: exit code {code} {}",
                    s(c, "name"),
                    s(c, "reason")
                ));
            }
        }
        (_, Some(ci)) => out.push(format!(
            "placed on instance {}; {}",
            short(ci),
            if s(t, "lastStatus") == "RUNNING" {
                "running"
            } else {
                "waiting for the instance's agent to start it"
            }
        )),
        (_, None) if reasons.is_empty() => {
            out.push("not placed yet; the scheduler has not reported a reason (yet)".into())
        }
        (_, None) => {
            out.push("not placed yet, because:".into());
            out.extend(reasons.iter().map(|r| match gloss(r) {
                Some(g) => format!("  - {r}: {g}"),
                None => format!("  - {r}"),
            }));
        }
    }
    out.join("\n")
}

pub async fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let t = one_task(&client, &a.task).await?;
    emit_text(a.common.output, &t, &explain_text(&t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_names_and_glosses_reasons() {
        let t = json!({"taskArn": "arn:aws:ecs:r:1:task/c/abc", "taskDefinitionArn": "arn:aws:ecs:r:1:task-definition/web:2",
            "lastStatus": "PROVISIONING", "desiredStatus": "RUNNING",
            "pendingReasons": ["RESOURCE:PORTS on 2 instances", "DRAINING on 1 instance"]});
        let text = explain_text(&t);
        assert!(text.starts_with("task abc (web:2) is PROVISIONING"), "{text}");
        assert!(
            text.contains("  - RESOURCE:PORTS on 2 instances: a host port it needs is already taken"),
            "{text}"
        );
        assert!(
            text.contains("  - DRAINING on 1 instance: the instance is draining"),
            "{text}"
        );
        let t = json!({"taskArn": "x/abc", "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
            "stoppedReason": "Essential container exited", "stopCode": "EssentialContainerExited",
            "containers": [{"name": "web", "exitCode": 137}]});
        let text = explain_text(&t);
        assert!(
            text.contains("stopped: Essential container exited") && text.contains("exit code 137"),
            "{text}"
        );
    }

    #[test]
    fn follow_prints_whole_lines_once() {
        let mut seen: Vec<String> = Vec::new();
        let n = print_new("a\nb\npart", 0, true, |l| seen.push(l.to_string()));
        assert_eq!((n, seen.clone()), (4, vec!["a".to_string(), "b".to_string()]));
        let m = print_new("a\nb\npartial\n", n, true, |l| seen.push(l.to_string()));
        assert_eq!((m, seen.last().map(String::as_str)), (8, Some("partial")));
        let mut all: Vec<String> = Vec::new();
        print_new("x\ny", 0, false, |l| all.push(l.to_string()));
        assert_eq!(all, ["x", "y"]);
    }
}
