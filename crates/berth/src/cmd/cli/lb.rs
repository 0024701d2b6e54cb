//! `berth lb create|ls|describe|rm`, `berth targetgroup create|ls|rm` and
//! `berth targets GROUP`: load balancers and target groups through the
//! server's load balancer API (`/v1/elb/{Operation}`).

use anyhow::Context as _;
use berth_client::Client;
use serde_json::{Value, json};

use super::output::{Table, emit};
use super::{Common, exit, fail, s};

/// Calls a load balancer API operation.
pub async fn elb(client: &Client, op: &str, body: Value) -> anyhow::Result<Value> {
    Ok(client
        .extension(&format!("/v1/elb/{op}"), "the load balancer API", &body)
        .await?)
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth lb create front --port 80 --target-group web\n  berth lb create front --port 80 --rule host=api.example.com,path=/v1,group=api --target-group web"
)]
pub struct LbCreateArgs {
    pub name: String,
    /// Host port of the listener (0: the data plane picks one and reports it).
    #[arg(long)]
    pub port: u16,
    /// Target group for requests no rule matches.
    #[arg(long)]
    pub target_group: Option<String>,
    /// A rule `host=H,path=/P,group=G` (host and path optional); repeat for more, first match wins.
    #[arg(long = "rule")]
    pub rules: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct LbNameArgs {
    pub name: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct LbLsArgs {
    #[command(flatten)]
    pub common: Common,
}

fn parse_rule(r: &str) -> anyhow::Result<Value> {
    let mut rule = json!({});
    for part in r.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| fail(exit::USAGE, format!("--rule '{r}': expected key=value pairs"), None))?;
        match k.trim() {
            "host" => rule["host"] = json!(v),
            "path" => rule["pathPrefix"] = json!(v),
            "group" => rule["targetGroup"] = json!(v),
            other => {
                return Err(fail(
                    exit::USAGE,
                    format!("--rule '{r}': unknown key '{other}' (host, path, group)"),
                    None,
                ));
            }
        }
    }
    if rule.get("targetGroup").is_none() {
        return Err(fail(exit::USAGE, format!("--rule '{r}': group=NAME is required"), None));
    }
    Ok(rule)
}

fn lb_table(lbs: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "PORT", "ADDRESS", "RULES", "DEFAULT GROUP"]);
    for lb in lbs {
        for l in lb["listeners"].as_array().into_iter().flatten() {
            let rules: Vec<String> = l["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}{}->{}",
                        s(r, "host"),
                        r["pathPrefix"]
                            .as_str()
                            .unwrap_or(if r.get("host").is_some() { "" } else { "*" }),
                        s(r, "targetGroup")
                    )
                })
                .collect();
            t.row(vec![
                s(lb, "loadBalancerName").to_string(),
                l["port"].to_string(),
                s(l, "address").to_string(),
                if rules.is_empty() { "-".into() } else { rules.join(" ") },
                l["defaultTargetGroup"].as_str().unwrap_or("-").to_string(),
            ]);
        }
    }
    t
}

pub async fn lb_create(a: LbCreateArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let rules = a
        .rules
        .iter()
        .map(|r| parse_rule(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut listener = json!({"port": a.port, "rules": rules});
    if let Some(g) = &a.target_group {
        listener["defaultTargetGroup"] = json!(g);
    }
    let r = elb(
        &client,
        "CreateLoadBalancer",
        json!({"loadBalancerName": a.name, "listeners": [listener]}),
    )
    .await?;
    let lbs = r["loadBalancers"].as_array().cloned().unwrap_or_default();
    emit(a.common.output, &r, &lb_table(&lbs));
    Ok(())
}

pub async fn lb_ls(a: LbLsArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let r = elb(&client, "DescribeLoadBalancers", json!({})).await?;
    let lbs = r["loadBalancers"].as_array().cloned().unwrap_or_default();
    emit(a.common.output, &r, &lb_table(&lbs));
    Ok(())
}

pub async fn lb_describe(a: LbNameArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let r = elb(&client, "DescribeLoadBalancers", json!({"names": [a.name]})).await?;
    let lbs = r["loadBalancers"].as_array().cloned().unwrap_or_default();
    let mut text = lb_table(&lbs).render();
    // The groups it routes to, with their targets.
    let mut groups: Vec<String> = Vec::new();
    for l in lbs
        .iter()
        .flat_map(|lb| lb["listeners"].as_array().cloned().unwrap_or_default())
    {
        for g in l["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| s(r, "targetGroup").to_string())
            .chain(l["defaultTargetGroup"].as_str().map(str::to_string))
        {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let mut out = r.clone();
    let mut all_targets = Vec::new();
    for g in &groups {
        let t = elb(&client, "DescribeTargetHealth", json!({"targetGroup": g})).await?;
        let targets = t["targets"].as_array().cloned().unwrap_or_default();
        text.push_str(&format!("\ntarget group {g}:\n"));
        text.push_str(&targets_table(&targets).render());
        all_targets.extend(targets);
    }
    out["targets"] = json!(all_targets);
    super::output::emit_text(a.common.output, &out, text.trim_end());
    Ok(())
}

pub async fn lb_rm(a: LbNameArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let r = elb(&client, "DeleteLoadBalancer", json!({"loadBalancer": a.name})).await?;
    super::output::emit_text(a.common.output, &r, &format!("deleted load balancer {}", a.name));
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth targetgroup create web --health-path /health --interval 5 --deregistration-delay 10\n  berth targetgroup ls\n  berth targetgroup rm web"
)]
pub struct TargetGroupArgs {
    #[command(subcommand)]
    cmd: TgCmd,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Subcommand)]
enum TgCmd {
    /// Create a target group (HTTP) with its health check.
    Create {
        name: String,
        #[arg(long, default_value = "/")]
        health_path: String,
        /// Seconds between health checks.
        #[arg(long, default_value_t = 5)]
        interval: u32,
        /// Seconds a health check may take.
        #[arg(long, default_value_t = 2)]
        timeout: u32,
        #[arg(long, default_value_t = 2)]
        healthy_threshold: u32,
        #[arg(long, default_value_t = 2)]
        unhealthy_threshold: u32,
        /// Passing status codes: 200, 200-299, 200,302.
        #[arg(long, default_value = "200-399")]
        matcher: String,
        /// Seconds a deregistered target keeps finishing its requests before its task stops.
        #[arg(long, default_value_t = 30)]
        deregistration_delay: u32,
        /// `round_robin` or `least_outstanding`.
        #[arg(long, default_value = "least_outstanding")]
        algorithm: String,
        /// Seconds to wait for a target's response head.
        #[arg(long, default_value_t = 30)]
        request_timeout: u32,
    },
    /// List target groups.
    Ls,
    /// Delete a target group (not while a load balancer or service uses it).
    Rm { name: String },
}

pub async fn targetgroup(a: TargetGroupArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let fmt = a.common.output;
    match a.cmd {
        TgCmd::Create {
            name,
            health_path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            matcher,
            deregistration_delay,
            algorithm,
            request_timeout,
        } => {
            let r = elb(
                &client,
                "CreateTargetGroup",
                json!({"targetGroupName": name, "deregistrationDelaySeconds": deregistration_delay,
                       "algorithm": algorithm, "requestTimeoutSeconds": request_timeout,
                       "healthCheck": {"path": health_path, "intervalSeconds": interval,
                                       "timeoutSeconds": timeout, "healthyThreshold": healthy_threshold,
                                       "unhealthyThreshold": unhealthy_threshold, "matcher": matcher}}),
            )
            .await?;
            let groups = r["targetGroups"].as_array().cloned().unwrap_or_default();
            emit(fmt, &r, &tg_table(&groups));
        }
        TgCmd::Ls => {
            let r = elb(&client, "DescribeTargetGroups", json!({})).await?;
            let groups = r["targetGroups"].as_array().cloned().unwrap_or_default();
            emit(fmt, &r, &tg_table(&groups));
        }
        TgCmd::Rm { name } => {
            let r = elb(&client, "DeleteTargetGroup", json!({"targetGroup": name})).await?;
            super::output::emit_text(fmt, &r, &format!("deleted target group {name}"));
        }
    }
    Ok(())
}

fn tg_table(groups: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "TARGETS", "HEALTH CHECK", "DEREG DELAY", "ALGORITHM", "ARN"]);
    for g in groups {
        let hc = &g["healthCheck"];
        t.row(vec![
            s(g, "targetGroupName").to_string(),
            g.get("targetCount").map_or("-".into(), Value::to_string),
            format!(
                "{} every {}s ({}/{})",
                s(hc, "path"),
                hc["intervalSeconds"],
                hc["healthyThreshold"],
                hc["unhealthyThreshold"]
            ),
            format!("{}s", g["deregistrationDelaySeconds"]),
            s(g, "algorithm").to_string(),
            s(g, "targetGroupArn").to_string(),
        ]);
    }
    t
}

fn targets_table(targets: &[Value]) -> Table {
    let mut t = Table::new(&["ADDRESS", "TASK", "SERVICE", "STATE", "HEALTH", "IN-FLIGHT"]);
    for x in targets {
        t.row(vec![
            s(x, "id").to_string(),
            super::short(s(x, "taskArn")).to_string(),
            s(x, "service").to_string(),
            s(x, "state").to_string(),
            x["health"].as_str().unwrap_or("-").to_string(),
            x["inFlight"].as_u64().map_or("-".into(), |n| n.to_string()),
        ]);
    }
    t
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  berth targets web")]
pub struct TargetsArgs {
    /// Target group name or ARN.
    pub group: String,
    #[command(flatten)]
    pub common: Common,
}

pub async fn targets(a: TargetsArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    let r = elb(&client, "DescribeTargetHealth", json!({"targetGroup": a.group}))
        .await
        .with_context(|| format!("target group {}", a.group))?;
    let targets = r["targets"].as_array().cloned().unwrap_or_default();
    emit(a.common.output, &r, &targets_table(&targets));
    Ok(())
}

/// The container of `taskdef` that maps `port` (for `service create --target-group`).
pub async fn container_for_port(client: &Client, taskdef: &str, port: u16) -> anyhow::Result<String> {
    let d = client
        .call("DescribeTaskDefinition", &json!({"taskDefinition": taskdef}))
        .await?;
    d["taskDefinition"]["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["portMappings"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"].as_u64() == Some(u64::from(port)))
        })
        .map(|c| s(c, "name").to_string())
        .ok_or_else(|| {
            fail(
                exit::USAGE,
                format!("no container of {taskdef} maps port {port}"),
                Some("pass --container-name, or check --container-port"),
            )
        })
}
