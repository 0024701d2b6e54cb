//! `berth events [-f]`: a cluster's state changes from the server's
//! server-sent-events stream (`GET /v1/clusters/NAME/events`, a Berth
//! extension): tasks, services, container instances and the cluster record.

use std::time::Duration;

use serde_json::Value;

use super::output::Format;
use super::{Common, exit, fail, s};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth events                 # the retained history, then exit\n  berth events -f -c dev       # follow new changes\n  berth events -f --from 120 -o json | jq .record.lastStatus"
)]
pub struct EventsArgs {
    #[command(flatten)]
    common: Common,
    /// Keep printing changes as they happen (from now, unless --from).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Start at this store revision (default: 1 without -f, now with -f).
    #[arg(long)]
    from: Option<i64>,
}

/// Without `-f`, the history is delivered at once; a quiet stream for this
/// long means it is all there.
const HISTORY_IDLE: Duration = Duration::from_millis(1500);

/// The path of a cluster's event stream.
pub fn events_path(cluster: &str) -> String {
    format!("/v1/clusters/{cluster}/events")
}

/// One aligned line for a person: `REVISION  TYPE  OP  summary`.
pub fn line(data: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return data.to_string();
    };
    let r = &v["record"];
    let id = |k: &str| s(r, k).rsplit('/').next().unwrap_or("").to_string();
    let summary = match s(&v, "type") {
        "task" => format!(
            "task {} {} (desired {}){}",
            id("id"),
            s(r, "lastStatus"),
            s(r, "desiredStatus"),
            r.get("containerInstance")
                .and_then(Value::as_str)
                .map(|i| format!(" on {i}"))
                .unwrap_or_default()
        ),
        "service" => format!(
            "service {} {} {}/{} running",
            s(r, "serviceName"),
            s(r, "status"),
            r["runningCount"].as_i64().unwrap_or(0),
            r["desiredCount"].as_i64().unwrap_or(0)
        ),
        "instance" => format!("instance {} {}", id("id"), s(r, "status")),
        "cluster" => format!("cluster {} {}", s(r, "clusterName"), s(r, "status")),
        _ => s(&v, "key").to_string(),
    };
    format!(
        "{:>8}  {:<8}  {:<6}  {}",
        v["revision"].as_i64().unwrap_or(0),
        s(&v, "type"),
        s(&v, "op"),
        summary.trim_end()
    )
}

pub async fn events(a: EventsArgs) -> anyhow::Result<()> {
    let client = a.common.client()?;
    // The stream of an unknown cluster would just stay silent: say so instead.
    let r = client
        .call("DescribeClusters", &serde_json::json!({"clusters": [client.cluster()]}))
        .await?;
    if !r["clusters"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| s(c, "status") == "ACTIVE"))
    {
        return Err(fail(
            exit::NOT_FOUND,
            format!("ClusterNotFoundException: cluster '{}' not found", client.cluster()),
            Some("see `berth cluster ls`"),
        ));
    }
    let from = a.from.unwrap_or(if a.follow { 0 } else { 1 });
    let query = if from > 0 {
        format!("from={from}")
    } else {
        String::new()
    };
    let idle = (!a.follow).then_some(HISTORY_IDLE);
    let fmt = a.common.output;
    client
        .events(&events_path(client.cluster()), &query, "events stream", idle, |data| {
            match fmt {
                Format::Table => println!("{}", line(data)),
                // One JSON document per event, so `-f -o json` pipes into jq.
                _ => println!("{data}"),
            }
            true
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let d = r#"{"type": "task", "op": "put", "revision": 42, "key": "/tasks/dev/abc",
                    "record": {"id": "abc", "lastStatus": "RUNNING", "desiredStatus": "RUNNING", "containerInstance": "i1"}}"#;
        assert_eq!(
            line(d),
            "      42  task      put     task abc RUNNING (desired RUNNING) on i1"
        );
        let d = r#"{"type": "service", "op": "put", "revision": 7, "record": {"serviceName": "web", "status": "ACTIVE",
                    "runningCount": 1, "desiredCount": 2}}"#;
        assert!(line(d).ends_with("service web ACTIVE 1/2 running"), "{}", line(d));
        assert_eq!(line("plain text"), "plain text");
    }
}
