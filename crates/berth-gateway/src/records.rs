//! Store mutations the gateway makes on behalf of agents: registering the
//! container instance, applying task state changes (and releasing a stopped
//! task's resources in the same transaction), marking an instance's agent
//! connected or not, and stopping the tasks of an instance whose agent is
//! gone. Every one is a compare-and-swap on what it read, retried on conflict.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_model::{
    ArnContext, ContainerInstance, InstanceStatus, ResourceType, Task, TaskDefinition, TaskStatus, Timestamp,
    VersionInfo,
};
use berth_proto::{ContainerHealth, DesiredTask, PortAssignment, Register, TaskStateChange};
use berth_server::keys;
use berth_store::{CmpOp, Compare, DynStore, Op, RangeRequest, Revision, TxnRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::GatewayError;

const ATTEMPTS: usize = 20;

pub(crate) fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// A record with the JSON members the model does not carry, and its revision.
pub(crate) struct Stored<T> {
    pub value: T,
    pub raw: Map<String, Value>,
    pub mod_revision: Revision,
}

pub(crate) async fn get<T: DeserializeOwned>(store: &DynStore, key: &str) -> Result<Option<Stored<T>>, GatewayError> {
    let Some(kv) = store.get(key.as_bytes()).await? else {
        return Ok(None);
    };
    let raw: Map<String, Value> =
        serde_json::from_slice(&kv.value).map_err(|e| GatewayError::Decode(format!("{key}: {e}")))?;
    let value =
        serde_json::from_value(Value::Object(raw.clone())).map_err(|e| GatewayError::Decode(format!("{key}: {e}")))?;
    Ok(Some(Stored {
        value,
        raw,
        mod_revision: kv.mod_revision,
    }))
}

/// JSON of `v` keeping the extra members of the record it replaces.
pub(crate) fn encode<T: Serialize>(v: &T, raw: &Map<String, Value>) -> Result<Vec<u8>, GatewayError> {
    let mut out = serde_json::to_value(v).map_err(|e| GatewayError::Decode(e.to_string()))?;
    if let Value::Object(m) = &mut out {
        for (k, x) in raw {
            m.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    serde_json::to_vec(&out).map_err(|e| GatewayError::Decode(e.to_string()))
}

/// Creates or re-registers the agent's container instance; returns its id.
pub(crate) async fn register(store: &DynStore, reg: &Register) -> Result<String, GatewayError> {
    let cluster = reg.cluster.as_str();
    for _ in 0..ATTEMPTS {
        let Some(c) = get::<berth_model::Cluster>(store, &keys::cluster(cluster)).await? else {
            if cluster == "default" {
                // As in ECS, an agent of the default cluster creates it.
                create_default_cluster(store).await?;
                continue;
            }
            return Err(GatewayError::Refused(format!("cluster {cluster} does not exist")));
        };
        if c.value.status != "ACTIVE" {
            return Err(GatewayError::Refused(format!("cluster {cluster} is not active")));
        }
        let previous = reg
            .container_instance_arn
            .as_deref()
            .and_then(|arn| arn.rsplit('/').next())
            .map(str::to_string);
        let existing = match &previous {
            Some(id) => get::<ContainerInstance>(store, &keys::instance(cluster, id))
                .await?
                .filter(|s| s.value.status != InstanceStatus::Inactive),
            None => None,
        };
        let mut attributes: BTreeMap<String, String> = reg.attributes.iter().cloned().collect();
        attributes.entry("ecs.os-type".into()).or_insert_with(|| "linux".into());
        attributes.insert("berth.driver".into(), reg.driver.clone());
        if let Some(ip) = reg.ip_addresses.first() {
            attributes.insert("berth.host-ip".into(), ip.clone());
        }
        // Where the agent serves logs and task metadata (berth logs reads it).
        if let Some(m) = &reg.metadata_endpoint {
            attributes.insert("berth.metadata-endpoint".into(), m.clone());
        }
        let version_info = VersionInfo {
            agent_version: reg.agent_version.clone(),
            agent_hash: reg.agent_id.clone(),
            docker_version: String::new(),
        };
        let (ci, raw, rev) = match existing {
            Some(s) => {
                let ci = ContainerInstance {
                    agent_connected: true,
                    attributes,
                    version_info,
                    port_range: reg.port_range,
                    ..s.value.clone()
                };
                (ci, s.raw, s.mod_revision)
            }
            None => {
                let ci = ContainerInstance {
                    id: new_id(),
                    cluster: cluster.to_string(),
                    ec2_instance_id: format!("{}-{}", reg.hostname, &reg.agent_id[..reg.agent_id.len().min(8)]),
                    status: InstanceStatus::Active,
                    agent_connected: true,
                    registered: reg.resources.clone(),
                    remaining: reg.resources.clone(),
                    port_range: reg.port_range,
                    attributes,
                    version_info,
                    running_tasks_count: 0,
                    pending_tasks_count: 0,
                    registered_at: now(),
                    tags: Vec::new(),
                };
                (ci, Map::new(), 0)
            }
        };
        berth_model::Validate::validate(&ci).map_err(|e| GatewayError::Refused(format!("registration: {e}")))?;
        let key = keys::instance(cluster, &ci.id);
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(
                keys::cluster(cluster),
                CmpOp::Equal,
                c.mod_revision,
            ))
            .when(Compare::mod_revision(&key, CmpOp::Equal, rev))
            .then(Op::put(&key, encode(&ci, &raw)?));
        if store.txn(txn).await?.succeeded {
            return Ok(ci.id);
        }
    }
    Err(GatewayError::Conflict("registering the container instance"))
}

/// Creates the `default` cluster if it is still missing.
pub(crate) async fn create_default_cluster(store: &DynStore) -> Result<(), GatewayError> {
    let key = keys::cluster("default");
    let cluster = berth_model::Cluster {
        cluster_name: "default".into(),
        cluster_arn: berth_model::Arn::new(&ArnContext::default(), ResourceType::Cluster, "default").to_string(),
        status: "ACTIVE".into(),
        tags: Vec::new(),
        settings: Vec::new(),
        created_at: now(),
    };
    store
        .txn(
            TxnRequest::new()
                .when(Compare::missing(&key))
                .then(Op::put(&key, encode(&cluster, &Map::new())?)),
        )
        .await?;
    Ok(())
}

/// Sets the instance's `agentConnected`.
pub(crate) async fn set_connected(
    store: &DynStore,
    cluster: &str,
    id: &str,
    connected: bool,
) -> Result<(), GatewayError> {
    let key = keys::instance(cluster, id);
    for _ in 0..ATTEMPTS {
        let Some(s) = get::<ContainerInstance>(store, &key).await? else {
            return Ok(());
        };
        if s.value.agent_connected == connected {
            return Ok(());
        }
        let mut ci = s.value.clone();
        ci.agent_connected = connected;
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(&key, CmpOp::Equal, s.mod_revision))
            .then(Op::put(&key, encode(&ci, &s.raw)?));
        if store.txn(txn).await?.succeeded {
            return Ok(());
        }
    }
    Err(GatewayError::Conflict("updating agentConnected"))
}

fn family_revision(arn: &str) -> Option<(String, u32)> {
    let tail = arn.rsplit('/').next()?;
    let (family, rev) = tail.rsplit_once(':')?;
    Some((family.to_string(), rev.parse().ok()?))
}

/// What the agent needs to run (or stop) `t`.
pub(crate) async fn desired_task(
    store: &DynStore,
    arns: &ArnContext,
    t: &Task,
    overrides: Option<&Value>,
) -> Result<Option<DesiredTask>, GatewayError> {
    let Some((family, rev)) = family_revision(&t.task_definition_arn) else {
        return Ok(None);
    };
    let Some(td) = get::<TaskDefinition>(store, &keys::taskdef(&family, rev)).await? else {
        return Ok(None);
    };
    let mut host_ports = Vec::new();
    for c in &t.containers {
        for b in &c.network_bindings {
            host_ports.push(PortAssignment {
                container_name: c.name.clone(),
                container_port: b.container_port,
                host_port: b.host_port,
                protocol: b.protocol,
            });
        }
    }
    Ok(Some(DesiredTask {
        task_arn: task_arn(arns, &t.cluster, &t.id),
        cluster: t.cluster.clone(),
        desired_status: t.desired_status,
        task_definition: with_overrides(td.value, overrides),
        host_ports,
        stop_reason: t.stopped_reason.clone(),
    }))
}

/// The definition the agent runs: `td` with the task's RunTask
/// `containerOverrides` applied by container name (command replaced,
/// environment variables added or replaced by name, cpu, memory and
/// memoryReservation replaced). Members that do not decode are ignored: the
/// API validated them when the task was created.
pub(crate) fn with_overrides(mut td: TaskDefinition, overrides: Option<&Value>) -> TaskDefinition {
    let Some(list) = overrides
        .and_then(|o| o.get("containerOverrides"))
        .and_then(Value::as_array)
    else {
        return td;
    };
    for o in list {
        let Some(c) = o
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| td.container_definitions.iter_mut().find(|c| c.name == n))
        else {
            continue;
        };
        if let Some(cmd) = o
            .get("command")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        {
            c.command = cmd;
        }
        if let Some(env) = o
            .get("environment")
            .and_then(|v| serde_json::from_value::<Vec<berth_model::KeyValuePair>>(v.clone()).ok())
        {
            for kv in env {
                match c.environment.iter_mut().find(|e| e.name == kv.name) {
                    Some(e) => e.value = kv.value,
                    None => c.environment.push(kv),
                }
            }
        }
        if let Some(cpu) = o.get("cpu").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok()) {
            c.cpu = cpu;
        }
        if let Some(m) = o
            .get("memory")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
        {
            c.memory = Some(m);
        }
        if let Some(m) = o
            .get("memoryReservation")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
        {
            c.memory_reservation = Some(m);
        }
    }
    td
}

pub(crate) fn task_arn(arns: &ArnContext, cluster: &str, id: &str) -> String {
    berth_model::Arn::new(arns, ResourceType::Task, format!("{cluster}/{id}")).to_string()
}

/// Every task placed on the instance that is not STOPPED yet (with its
/// RunTask `overrides`), and the revision the read was made at.
pub(crate) async fn tasks_on(
    store: &DynStore,
    cluster: &str,
    id: &str,
) -> Result<(Vec<(Task, Option<Value>)>, Revision), GatewayError> {
    let mut out = Vec::new();
    let mut revision = 0;
    for bucket in ["RUNNING", "STOPPED"] {
        let prefix = keys::task_index_prefix(cluster, bucket, "instance", id);
        let mut req = RangeRequest::prefix(prefix.as_bytes());
        if revision != 0 {
            req = req.at(revision);
        }
        let resp = store.range(req).await?;
        revision = resp.revision;
        for kv in resp.kvs {
            let Some(task_id) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.rsplit('/').next()) else {
                continue;
            };
            if let Some(t) = get::<Task>(store, &keys::task(cluster, task_id)).await?
                && t.value.last_status != TaskStatus::Stopped
            {
                let overrides = t.raw.get("overrides").cloned();
                out.push((t.value, overrides));
            }
        }
    }
    Ok((out, revision))
}

/// Applies `status` to `t`; whether anything changed.
fn merge_state(t: &mut Task, change: &TaskStateChange) -> bool {
    let before = serde_json::to_value(&*t).ok();
    if t.last_status.can_become(change.last_status) {
        t.last_status = change.last_status;
    }
    for cs in &change.containers {
        if let Some(c) = t.containers.iter_mut().find(|c| c.name == cs.name) {
            if c.last_status.can_become(cs.last_status) {
                c.last_status = cs.last_status;
            }
            if cs.exit_code.is_some() {
                c.exit_code = cs.exit_code;
            }
            if cs.reason.is_some() {
                c.reason.clone_from(&cs.reason);
            }
            if cs.runtime_id.is_some() {
                c.runtime_id.clone_from(&cs.runtime_id);
            }
            if !cs.network_bindings.is_empty() {
                c.network_bindings.clone_from(&cs.network_bindings);
            }
            c.health_status = cs.health_status;
        }
    }
    t.health_status = change.health_status;
    if change.started_at.is_some() && t.started_at.is_none() {
        t.started_at = change.started_at;
    }
    if change.stopping_at.is_some() && t.stopping_at.is_none() {
        t.stopping_at = change.stopping_at;
    }
    if t.last_status == TaskStatus::Stopped {
        t.desired_status = TaskStatus::Stopped;
        if t.stopped_at.is_none() {
            t.stopped_at = Some(change.stopped_at.unwrap_or_else(now));
        }
        if t.stop_code.is_none() {
            t.stop_code.clone_from(&change.stop_code);
        }
        if t.stopped_reason.is_none() {
            t.stopped_reason.clone_from(&change.stopped_reason);
        }
    }
    let changed = before != serde_json::to_value(&*t).ok();
    if changed {
        t.version += 1;
    }
    changed
}

/// Moves the instance's counters and resources for a task going from `old`
/// to `new` status.
fn account(ci: &mut ContainerInstance, t: &Task, old: TaskStatus, new: TaskStatus) {
    // RUNNING and the states a running task passes on its way out
    // (DEACTIVATING while it leaves its target groups, STOPPING).
    let was_running = old >= TaskStatus::Running;
    if new == TaskStatus::Stopped && old != TaskStatus::Stopped {
        if was_running {
            ci.running_tasks_count = ci.running_tasks_count.saturating_sub(1);
        } else {
            ci.pending_tasks_count = ci.pending_tasks_count.saturating_sub(1);
        }
        let eni_capacity = ci.registered.enis.first().map_or(0, |e| e.ips);
        ci.remaining.release(&t.demand, None, eni_capacity);
    } else if new == TaskStatus::Running && old < TaskStatus::Running {
        ci.pending_tasks_count = ci.pending_tasks_count.saturating_sub(1);
        ci.running_tasks_count += 1;
    }
}

/// Records a state change the agent of `instance` reported.
pub(crate) async fn apply_state_change(
    store: &DynStore,
    cluster: &str,
    instance: &str,
    change: &TaskStateChange,
) -> Result<(), GatewayError> {
    let Some(task_id) = change.task_arn.rsplit('/').next() else {
        return Ok(());
    };
    let tkey = keys::task(cluster, task_id);
    let ikey = keys::instance(cluster, instance);
    for _ in 0..ATTEMPTS {
        let Some(old) = get::<Task>(store, &tkey).await? else {
            return Ok(());
        };
        if old.value.container_instance.as_deref() != Some(instance) {
            tracing::warn!(
                task = task_id,
                instance,
                "state change for a task not placed on this instance ignored"
            );
            return Ok(());
        }
        let mut t = old.value.clone();
        if !merge_state(&mut t, change) {
            return Ok(());
        }
        let mut txn = TxnRequest::new()
            .when(Compare::mod_revision(&tkey, CmpOp::Equal, old.mod_revision))
            .then(Op::put(&tkey, encode(&t, &old.raw)?));
        for op in keys::task_index_ops(Some(&old.value), Some(&t)) {
            txn = txn.then(op);
        }
        if t.last_status != old.value.last_status
            && let Some(ci) = get::<ContainerInstance>(store, &ikey).await?
        {
            let mut updated = ci.value.clone();
            account(&mut updated, &t, old.value.last_status, t.last_status);
            if updated != ci.value {
                txn = txn
                    .when(Compare::mod_revision(&ikey, CmpOp::Equal, ci.mod_revision))
                    .then(Op::put(&ikey, encode(&updated, &ci.raw)?));
            }
        }
        if store.txn(txn).await?.succeeded {
            return Ok(());
        }
    }
    Err(GatewayError::Conflict("recording a task state change"))
}

/// Marks every task of a lost instance STOPPED and gives back its resources.
pub(crate) async fn stop_lost_tasks(store: &DynStore, cluster: &str, instance: &str) -> Result<usize, GatewayError> {
    let ikey = keys::instance(cluster, instance);
    for _ in 0..ATTEMPTS {
        let Some(ci) = get::<ContainerInstance>(store, &ikey).await? else {
            return Ok(0);
        };
        if ci.value.agent_connected {
            return Ok(0);
        }
        let (tasks, _) = tasks_on(store, cluster, instance).await?;
        let mut updated = ci.value.clone();
        let mut txn = TxnRequest::new().when(Compare::mod_revision(&ikey, CmpOp::Equal, ci.mod_revision));
        let reason = format!("Host EC2 (instance {}) stopped/terminated", ci.value.ec2_instance_id);
        let stamp = now();
        for (old, _) in &tasks {
            let Some(stored) = get::<Task>(store, &keys::task(cluster, &old.id)).await? else {
                continue;
            };
            let mut t = stored.value.clone();
            t.last_status = TaskStatus::Stopped;
            t.desired_status = TaskStatus::Stopped;
            t.stopped_at.get_or_insert(stamp);
            t.stopping_at.get_or_insert(stamp);
            t.stop_code.get_or_insert_with(|| "TerminationNotice".into());
            t.stopped_reason.get_or_insert_with(|| reason.clone());
            for c in &mut t.containers {
                c.last_status = TaskStatus::Stopped;
                c.reason.get_or_insert_with(|| reason.clone());
            }
            t.version += 1;
            account(&mut updated, &t, stored.value.last_status, TaskStatus::Stopped);
            let tkey = keys::task(cluster, &t.id);
            txn = txn
                .when(Compare::mod_revision(&tkey, CmpOp::Equal, stored.mod_revision))
                .then(Op::put(&tkey, encode(&t, &stored.raw)?));
            for op in keys::task_index_ops(Some(&stored.value), Some(&t)) {
                txn = txn.then(op);
            }
        }
        if tasks.is_empty() {
            return Ok(0);
        }
        txn = txn.then(Op::put(&ikey, encode(&updated, &ci.raw)?));
        if store.txn(txn).await?.succeeded {
            return Ok(tasks.len());
        }
    }
    Err(GatewayError::Conflict("stopping the tasks of a lost instance"))
}

/// Every instance whose record says its agent is connected.
pub(crate) async fn connected_instances(store: &DynStore) -> Result<Vec<(String, String)>, GatewayError> {
    let resp = store.range(RangeRequest::prefix(b"/instances/")).await?;
    let mut out = Vec::new();
    for kv in resp.kvs {
        if let Ok(ci) = serde_json::from_slice::<ContainerInstance>(&kv.value)
            && ci.agent_connected
        {
            out.push((ci.cluster, ci.id));
        }
    }
    Ok(out)
}

/// Records a container health change.
pub(crate) async fn apply_health(
    store: &DynStore,
    cluster: &str,
    instance: &str,
    h: &ContainerHealth,
) -> Result<(), GatewayError> {
    let Some(task_id) = h.task_arn.rsplit('/').next() else {
        return Ok(());
    };
    let key = keys::task(cluster, task_id);
    for _ in 0..ATTEMPTS {
        let Some(old) = get::<Task>(store, &key).await? else {
            return Ok(());
        };
        if old.value.container_instance.as_deref() != Some(instance) {
            return Ok(());
        }
        let mut t = old.value.clone();
        if let Some(c) = t.containers.iter_mut().find(|c| c.name == h.container_name) {
            c.health_status = h.health_status;
        }
        t.health_status = h.task_health_status;
        if t == old.value {
            return Ok(());
        }
        t.version += 1;
        let txn = TxnRequest::new()
            .when(Compare::mod_revision(&key, CmpOp::Equal, old.mod_revision))
            .then(Op::put(&key, encode(&t, &old.raw)?));
        if store.txn(txn).await?.succeeded {
            return Ok(());
        }
    }
    Err(GatewayError::Conflict("recording container health"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn td() -> TaskDefinition {
        serde_json::from_value(json!({
            "family": "web", "revision": 1,
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1",
            "containerDefinitions": [
                {"name": "app", "image": "x", "command": ["serve"], "cpu": 128, "memory": 64,
                 "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "y", "command": ["idle"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn container_overrides_reach_the_definition_the_agent_runs() {
        let ov = json!({"containerOverrides": [{
            "name": "app", "command": ["echo", "hi"], "memory": 256,
            "environment": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]
        }]});
        let out = with_overrides(td(), Some(&ov));
        let app = &out.container_definitions[0];
        assert_eq!(app.command, vec!["echo", "hi"]);
        assert_eq!(app.memory, Some(256));
        assert_eq!(app.cpu, 128);
        let env: Vec<(&str, &str)> = app
            .environment
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, vec![("A", "1"), ("B", "two"), ("C", "3")]);
        assert_eq!(
            out.container_definitions[1].command,
            vec!["idle"],
            "other containers untouched"
        );
    }

    #[test]
    fn no_overrides_or_unknown_container_change_nothing() {
        assert_eq!(with_overrides(td(), None), td());
        let ov = json!({"containerOverrides": [{"name": "nope", "command": ["x"]}]});
        assert_eq!(with_overrides(td(), Some(&ov)), td());
    }
}
