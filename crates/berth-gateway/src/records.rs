//! Store mutations the gateway makes on behalf of agents: registering the
//! container instance, applying task state changes (and releasing a stopped
//! task's resources in the same transaction), marking an instance's agent
//! connected or not, and stopping the tasks of an instance whose agent is
//! gone. Every one is a compare-and-swap on what it read, retried on conflict.

use std::collections::BTreeMap;

use berth_model::{ArnContext, ContainerInstance, InstanceStatus, ResourceType, Task, TaskStatus, VersionInfo};
use berth_proto::{ContainerHealth, DesiredTask, PortAssignment, Register, TaskStateChange};
use berth_records::{Attempt, Budget, Change, Env, Stored, TaskDefs, encode, get, keys, transact, update};
use berth_store::{CmpOp, Compare, DynStore, Op, RangeRequest, Revision, TxnRequest};
use serde_json::Map;

use crate::GatewayError;

/// Creates or re-registers the agent's container instance; returns its id.
#[tracing::instrument(skip_all, fields(cluster = %reg.cluster, agent = %reg.agent_id))]
pub(crate) async fn register(store: &DynStore, env: &Env, reg: &Register) -> Result<String, GatewayError> {
    let cluster = reg.cluster.as_str();
    transact(
        store,
        Budget::DEFAULT,
        "registering the container instance",
        || async move {
            let Some(c) = get::<berth_model::Cluster>(store, &keys::cluster(cluster)).await? else {
                if cluster == "default" {
                    // As in ECS, an agent of the default cluster creates it.
                    create_default_cluster(store, env).await?;
                    return Ok(Attempt::Retry);
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
            let ci = registration(env, reg, existing.as_ref().map(|s| &s.value));
            berth_model::Validate::validate(&ci).map_err(|e| GatewayError::Refused(format!("registration: {e}")))?;
            let (raw, rev) = existing.map_or((Map::new(), 0), |s| (s.raw, s.mod_revision));
            let key = keys::instance(cluster, &ci.id);
            let txn = TxnRequest::new()
                .when(Compare::mod_revision(
                    keys::cluster(cluster),
                    CmpOp::Equal,
                    c.mod_revision,
                ))
                .when(Compare::mod_revision(&key, CmpOp::Equal, rev))
                .then(Op::put(&key, encode(&ci, &raw)?));
            Ok(Attempt::Commit(txn, ci.id))
        },
    )
    .await
}

/// The instance record a registration makes: `existing` updated, or a new one.
fn registration(env: &Env, reg: &Register, existing: Option<&ContainerInstance>) -> ContainerInstance {
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
    match existing {
        Some(old) => ContainerInstance {
            agent_connected: true,
            attributes,
            version_info,
            port_range: reg.port_range,
            ..old.clone()
        },
        None => ContainerInstance {
            id: env.new_id(),
            cluster: reg.cluster.clone(),
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
            registered_at: env.now(),
            tags: Vec::new(),
        },
    }
}

/// Creates the `default` cluster if it is still missing.
pub(crate) async fn create_default_cluster(store: &DynStore, env: &Env) -> Result<(), GatewayError> {
    let key = keys::cluster("default");
    let cluster = berth_model::Cluster {
        cluster_name: "default".into(),
        cluster_arn: berth_model::Arn::new(&ArnContext::default(), ResourceType::Cluster, "default").to_string(),
        status: "ACTIVE".into(),
        tags: Vec::new(),
        settings: Vec::new(),
        created_at: env.now(),
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
    update(
        store,
        &keys::instance(cluster, id),
        Budget::DEFAULT,
        |cur: Option<&Stored<ContainerInstance>>| {
            Ok::<_, GatewayError>(match cur {
                Some(s) if s.value.agent_connected != connected => {
                    let mut ci = s.value.clone();
                    ci.agent_connected = connected;
                    Change::put(ci)
                }
                _ => Change::keep(),
            })
        },
    )
    .await?;
    Ok(())
}

/// What the agent needs to run (or stop) `t`: its definition with the
/// task's overrides applied (the same application the API computed the
/// task's demand from), and its host ports.
pub(crate) async fn desired_task(
    store: &DynStore,
    taskdefs: &mut TaskDefs,
    arns: &ArnContext,
    t: &Task,
) -> Result<Option<DesiredTask>, GatewayError> {
    let Some(td) = taskdefs.get(store, &t.task_definition_arn).await? else {
        return Ok(None);
    };
    let definition = match &t.overrides {
        Some(o) => o.apply(&td).unwrap_or_else(|e| {
            // The API validated them when the task was created.
            tracing::warn!(task = %t.id, error = %e, "task overrides do not apply; running the definition");
            td
        }),
        None => td,
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
        task_definition: definition,
        host_ports,
        stop_reason: t.stopped_reason.clone(),
    }))
}

pub(crate) fn task_arn(arns: &ArnContext, cluster: &str, id: &str) -> String {
    berth_model::Arn::new(arns, ResourceType::Task, format!("{cluster}/{id}")).to_string()
}

/// Every task placed on the instance that is not STOPPED yet, and the
/// revision the read was made at.
pub(crate) async fn tasks_on(store: &DynStore, cluster: &str, id: &str) -> Result<(Vec<Task>, Revision), GatewayError> {
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
                out.push(t.value);
            }
        }
    }
    Ok((out, revision))
}

/// Applies `status` to `t`; whether anything changed.
fn merge_state(t: &mut Task, change: &TaskStateChange, now: berth_model::Timestamp) -> bool {
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
            t.stopped_at = Some(change.stopped_at.unwrap_or(now));
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
#[tracing::instrument(skip_all, fields(cluster = %cluster, instance = %instance, task = %change.task_arn))]
pub(crate) async fn apply_state_change(
    store: &DynStore,
    env: &Env,
    cluster: &str,
    instance: &str,
    change: &TaskStateChange,
) -> Result<(), GatewayError> {
    let Some(task_id) = change.task_arn.rsplit('/').next() else {
        return Ok(());
    };
    let (tkey, ikey) = (&keys::task(cluster, task_id), &keys::instance(cluster, instance));
    transact(store, Budget::DEFAULT, "recording a task state change", || async move {
        let Some(old) = get::<Task>(store, tkey).await? else {
            return Ok(Attempt::Done(()));
        };
        if old.value.container_instance.as_deref() != Some(instance) {
            tracing::warn!(
                task = task_id,
                instance,
                "state change for a task not placed on this instance ignored"
            );
            return Ok(Attempt::Done(()));
        }
        let mut t = old.value.clone();
        if !merge_state(&mut t, change, env.now()) {
            return Ok(Attempt::Done(()));
        }
        let mut txn = berth_records::replace(tkey, &old, &t)?;
        if t.last_status != old.value.last_status
            && let Some(ci) = get::<ContainerInstance>(store, ikey).await?
        {
            let mut updated = ci.value.clone();
            account(&mut updated, &t, old.value.last_status, t.last_status);
            if updated != ci.value {
                let write = berth_records::replace(ikey, &ci, &updated)?;
                txn.compares.extend(write.compares);
                txn.success.extend(write.success);
            }
        }
        Ok(Attempt::Commit(txn, ()))
    })
    .await
}

/// Marks every task of a lost instance STOPPED and gives back its resources.
#[tracing::instrument(skip_all, fields(cluster = %cluster, instance = %instance))]
pub(crate) async fn stop_lost_tasks(
    store: &DynStore,
    env: &Env,
    cluster: &str,
    instance: &str,
) -> Result<usize, GatewayError> {
    let ikey = &keys::instance(cluster, instance);
    transact(
        store,
        Budget::DEFAULT,
        "stopping the tasks of a lost instance",
        || async move {
            let Some(ci) = get::<ContainerInstance>(store, ikey).await? else {
                return Ok(Attempt::Done(0));
            };
            if ci.value.agent_connected {
                return Ok(Attempt::Done(0));
            }
            let (tasks, _) = tasks_on(store, cluster, instance).await?;
            if tasks.is_empty() {
                return Ok(Attempt::Done(0));
            }
            let mut updated = ci.value.clone();
            let mut txn = TxnRequest::new();
            let reason = format!("Host EC2 (instance {}) stopped/terminated", ci.value.ec2_instance_id);
            let stamp = env.now();
            for old in &tasks {
                let tkey = keys::task(cluster, &old.id);
                let Some(stored) = get::<Task>(store, &tkey).await? else {
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
                let write = berth_records::replace(&tkey, &stored, &t)?;
                txn.compares.extend(write.compares);
                txn.success.extend(write.success);
            }
            let write = berth_records::replace(ikey, &ci, &updated)?;
            txn.compares.extend(write.compares);
            txn.success.extend(write.success);
            Ok(Attempt::Commit(txn, tasks.len()))
        },
    )
    .await
}

/// Every instance whose record says its agent is connected.
pub(crate) async fn connected_instances(store: &DynStore) -> Result<Vec<(String, String)>, GatewayError> {
    let resp = store.range(RangeRequest::prefix(keys::INSTANCES)).await?;
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
    update(
        store,
        &keys::task(cluster, task_id),
        Budget::DEFAULT,
        |cur: Option<&Stored<Task>>| {
            let Some(old) = cur.filter(|s| s.value.container_instance.as_deref() == Some(instance)) else {
                return Ok::<_, GatewayError>(Change::keep());
            };
            let mut t = old.value.clone();
            if let Some(c) = t.containers.iter_mut().find(|c| c.name == h.container_name) {
                c.health_status = h.health_status;
            }
            t.health_status = h.task_health_status;
            if t == old.value {
                return Ok(Change::keep());
            }
            t.version += 1;
            Ok(Change::put(t))
        },
    )
    .await?;
    Ok(())
}
