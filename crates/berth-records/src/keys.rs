//! The store key space: every key any Berth component reads or writes is
//! built here. Records are JSON of `berth-model` types (plus members the
//! model does not carry, which [`crate::Stored`] keeps across rewrites):
//!
//! | key | value |
//! |---|---|
//! | `/clusters/{cluster}` | `Cluster` |
//! | `/instances/{cluster}/{id}` | `ContainerInstance` |
//! | `/tasks/{cluster}/{id}` | `Task` (+ `launchType`, protection, target health) |
//! | `/pending/{cluster}/{id}` | the task key: tasks waiting for the launcher |
//! | `/taskdefs/{family}/{revision:010}` | `TaskDefinition` (+ extra ECS members) |
//! | `/taskdef-families/{family}` | `{"latestRevision", "activeRevisions"}` |
//! | `/services/{cluster}/{name}` | `Service` |
//! | `/svcstate/{cluster}/{name}` | the reconciler's memory of a service |
//! | `/leader/{role}` | the holder of a controller role (under a lease) |
//! | `/tags/{arn resource path}` | `[Tag]` |
//! | `/idempotency/run-task/{cluster}/{token}` | the RunTask request hash and task ids |
//! | `/idx/tasks/{cluster}/{desired}/all/{id}` | empty: every task by desired status |
//! | `/idx/tasks/{cluster}/{desired}/family/{family}/{id}` | empty |
//! | `/idx/tasks/{cluster}/{desired}/started-by/{startedBy}/{id}` | empty |
//! | `/idx/tasks/{cluster}/{desired}/group/{group}/{id}` | empty (services use group `service:NAME`) |
//! | `/idx/tasks/{cluster}/{desired}/instance/{instance id}/{id}` | empty |
//! | `/idx/taskdefs/{status}/{family}/{revision:010}` | empty |
//! | `/idx/services/{cluster}/{name}` | empty: ACTIVE and DRAINING services |
//! | `/lb/loadbalancers/{name}` | `LoadBalancerDef` (API) |
//! | `/lb/targetgroups/{name}` | `TargetGroup` (API) |
//! | `/lb/targets/{group}/{ip:port}` | `TargetRecord` (target controller: registered / draining) |
//! | `/lb/health/{group}/{ip:port}` | `TargetHealthRecord` (data plane, on change) |
//! | `/lb/bound/{lb}/{port}` | the address a listener is served on (data plane) |
//!
//! Free-form segments (startedBy, group) are escaped so they never contain
//! `/`. Every writer of a task record updates its index keys in the same
//! transaction with [`task_index_ops`] ([`crate::update`] does it for
//! them); the launcher ranges and watches `/pending/` and deletes the
//! pending key in the transaction that places the task.

use berth_model::{Task, TaskStatus};
use berth_store::Op;

/// Escapes `%` and `/` so a free-form value is one key segment.
pub fn seg(s: &str) -> String {
    if !s.contains(['%', '/']) {
        return s.to_string();
    }
    s.replace('%', "%25").replace('/', "%2F")
}

pub fn cluster(name: &str) -> String {
    format!("{CLUSTERS}{name}")
}

pub const CLUSTERS: &str = "/clusters/";
pub const INSTANCES: &str = "/instances/";
pub const TASKS: &str = "/tasks/";
pub const SERVICES: &str = "/services/";
pub const SERVICE_STATES: &str = "/svcstate/";
pub const LEADER: &str = "/leader/";
pub const TAGS: &str = "/tags/";

/// The service record member holding the tier its `berth:tier` tag set
/// (the reconciler gives the service's tasks that tier).
pub const SERVICE_TIER: &str = "berthTier";

pub fn instances(cluster: &str) -> String {
    format!("{INSTANCES}{cluster}/")
}

pub fn instance(cluster: &str, id: &str) -> String {
    format!("{INSTANCES}{cluster}/{id}")
}

pub fn tasks(cluster: &str) -> String {
    format!("{TASKS}{cluster}/")
}

pub fn task(cluster: &str, id: &str) -> String {
    format!("{TASKS}{cluster}/{id}")
}

pub const PENDING: &str = "/pending/";

pub fn pending(cluster: &str, id: &str) -> String {
    format!("/pending/{cluster}/{id}")
}

pub fn pending_in(cluster: &str) -> String {
    format!("/pending/{cluster}/")
}

pub fn taskdef(family: &str, revision: u32) -> String {
    format!("/taskdefs/{family}/{revision:010}")
}

pub fn taskdef_family(family: &str) -> String {
    format!("/taskdef-families/{family}")
}

pub const TASKDEF_FAMILIES: &str = "/taskdef-families/";

/// `status` is `ACTIVE` or `INACTIVE`.
pub fn taskdef_index(status: &str, family: &str, revision: u32) -> String {
    format!("/idx/taskdefs/{status}/{family}/{revision:010}")
}

pub fn taskdef_index_prefix(status: &str) -> String {
    format!("/idx/taskdefs/{status}/")
}

pub fn service(cluster: &str, name: &str) -> String {
    format!("{SERVICES}{cluster}/{name}")
}

/// The reconciler's own record of a service (backoff, last completed
/// task definition, ...).
pub fn service_state(cluster: &str, name: &str) -> String {
    format!("{SERVICE_STATES}{cluster}/{name}")
}

/// The key a controller role's leader holds.
pub fn leader(role: &str) -> String {
    format!("{LEADER}{role}")
}

pub fn service_index(cluster: &str, name: &str) -> String {
    format!("/idx/services/{cluster}/{name}")
}

pub fn service_index_prefix(cluster: &str) -> String {
    format!("/idx/services/{cluster}/")
}

/// `path` is the ARN's resource part, e.g. `cluster/default`.
pub fn tags(path: &str) -> String {
    format!("{TAGS}{path}")
}

pub fn run_task_token(cluster: &str, token: &str) -> String {
    format!("/idempotency/run-task/{cluster}/{}", seg(token))
}

pub const LB: &str = "/lb/";
pub const LOADBALANCERS: &str = "/lb/loadbalancers/";
pub const TARGETGROUPS: &str = "/lb/targetgroups/";
pub const TARGETS: &str = "/lb/targets/";
pub const TARGET_HEALTH: &str = "/lb/health/";
pub const LB_BOUND: &str = "/lb/bound/";

pub fn loadbalancer(name: &str) -> String {
    format!("{LOADBALANCERS}{name}")
}

pub fn targetgroup(name: &str) -> String {
    format!("{TARGETGROUPS}{name}")
}

pub fn targets_of(group: &str) -> String {
    format!("{TARGETS}{group}/")
}

pub fn target(group: &str, addr: &str) -> String {
    format!("{TARGETS}{group}/{addr}")
}

pub fn target_health(group: &str, addr: &str) -> String {
    format!("{TARGET_HEALTH}{group}/{addr}")
}

pub fn lb_bound(lb: &str, port: u16) -> String {
    format!("{LB_BOUND}{lb}/{port}")
}

/// The desired-status bucket a task is indexed under.
pub fn desired_bucket(status: TaskStatus) -> &'static str {
    if status == TaskStatus::Stopped {
        "STOPPED"
    } else {
        "RUNNING"
    }
}

/// Prefix of one task index: `kind` is `all`, `family`, `started-by`,
/// `group` or `instance`; `value` is empty for `all`.
pub fn task_index_prefix(cluster: &str, desired: &str, kind: &str, value: &str) -> String {
    if kind == "all" {
        format!("/idx/tasks/{cluster}/{desired}/all/")
    } else {
        format!("/idx/tasks/{cluster}/{desired}/{kind}/{}/", seg(value))
    }
}

/// The `family` and `revision` of a task definition ARN
/// (`...:task-definition/FAMILY:REV`), or of `FAMILY:REV`.
pub fn family_revision(arn: &str) -> Option<(&str, u32)> {
    let tail = arn.rsplit('/').next()?;
    let (family, rev) = tail.rsplit_once(':')?;
    Some((family, rev.parse().ok()?))
}

/// `/prefix/{a}/{b}` → `(a, b)`: the cluster (or group) and the name of a
/// record under a two-level prefix.
pub fn split<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

/// The family of a task definition ARN (`...:task-definition/FAMILY:REV`).
pub fn family_of(task_definition_arn: &str) -> &str {
    let tail = task_definition_arn.rsplit('/').next().unwrap_or(task_definition_arn);
    tail.rsplit_once(':').map_or(tail, |(f, _)| f)
}

/// Every index key of a task.
pub fn task_index_keys(t: &Task) -> Vec<String> {
    let desired = desired_bucket(t.desired_status);
    let mut keys = vec![
        format!("{}{}", task_index_prefix(&t.cluster, desired, "all", ""), t.id),
        format!(
            "{}{}",
            task_index_prefix(&t.cluster, desired, "family", family_of(&t.task_definition_arn)),
            t.id
        ),
    ];
    if let Some(s) = &t.started_by {
        keys.push(format!(
            "{}{}",
            task_index_prefix(&t.cluster, desired, "started-by", s),
            t.id
        ));
    }
    if let Some(g) = &t.group {
        keys.push(format!(
            "{}{}",
            task_index_prefix(&t.cluster, desired, "group", g),
            t.id
        ));
    }
    if let Some(i) = &t.container_instance {
        keys.push(format!(
            "{}{}",
            task_index_prefix(&t.cluster, desired, "instance", i),
            t.id
        ));
    }
    keys
}

/// The ops that move a task's index keys from `old` to `new` (either may be
/// absent: creation or deletion). Unchanged keys are left alone.
pub fn task_index_ops(old: Option<&Task>, new: Option<&Task>) -> Vec<Op> {
    let old_keys = old.map(task_index_keys).unwrap_or_default();
    let new_keys = new.map(task_index_keys).unwrap_or_default();
    let mut ops: Vec<Op> = old_keys
        .iter()
        .filter(|k| !new_keys.contains(k))
        .map(|k| Op::delete(k.as_bytes()))
        .collect();
    ops.extend(
        new_keys
            .iter()
            .filter(|k| !old_keys.contains(k))
            .map(|k| Op::put(k.as_bytes(), b"")),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_never_contain_slashes() {
        assert_eq!(seg("plain"), "plain");
        assert_eq!(seg("a/b%c"), "a%2Fb%25c");
        assert_eq!(family_of("arn:aws:ecs:us-east-1:1:task-definition/web:3"), "web");
        assert_eq!(taskdef("web", 3), "/taskdefs/web/0000000003");
        assert_eq!(
            family_revision("arn:aws:ecs:us-east-1:1:task-definition/web:3"),
            Some(("web", 3))
        );
        assert_eq!(family_revision("web:x"), None);
        assert_eq!(service_state("c", "s"), "/svcstate/c/s");
        assert_eq!(split("/tasks/c/abc", TASKS), Some(("c", "abc")));
        assert_eq!(
            task_index_prefix("c", "RUNNING", "started-by", "ci/job"),
            "/idx/tasks/c/RUNNING/started-by/ci%2Fjob/"
        );
    }
}
