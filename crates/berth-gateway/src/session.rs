//! One agent's session: register, push the desired set and every change,
//! record what the agent reports, notice when it goes quiet.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use berth_model::{Task, TaskStatus};
use berth_proto::{AgentMessage, DesiredTasks, ErrorMessage, RegisterAck, ServerMessage, TaskUpdate};
use berth_records::{TaskDefs, keys};
use berth_store::EventKind;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::records::{self, task_arn};
use crate::{GatewayError, Shared};

async fn send(ws: &mut futures::stream::SplitSink<WebSocket, Message>, m: &ServerMessage) -> bool {
    match serde_json::to_string(m) {
        Ok(text) => ws.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// After a restart nobody is connected, whatever the records say: give each
/// such instance's agent the timeout to come back.
pub(crate) async fn sweep_on_start(shared: Arc<Shared>) {
    match records::connected_instances(&shared.store).await {
        Ok(list) => {
            for (cluster, id) in list {
                let generation = shared.generation(&id);
                tokio::spawn(lost_timer(shared.clone(), cluster, id, generation, true));
            }
        }
        Err(e) => tracing::warn!(error = %e, "gateway start-up sweep failed"),
    }
}

/// Waits out the timeout; if the agent did not come back, marks it
/// disconnected (when `mark`) and stops its tasks.
async fn lost_timer(shared: Arc<Shared>, cluster: String, instance: String, generation: u64, mark: bool) {
    tokio::time::sleep(shared.config.disconnect_timeout).await;
    if shared.generation(&instance) != generation {
        return;
    }
    if mark && let Err(e) = records::set_connected(&shared.store, &cluster, &instance, false).await {
        tracing::warn!(error = %e, instance, "marking instance disconnected failed");
        return;
    }
    match records::stop_lost_tasks(&shared.store, &shared.config.env, &cluster, &instance).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(instance, tasks = n, "agent lost: its tasks are marked STOPPED"),
        Err(e) => tracing::warn!(error = %e, instance, "stopping a lost agent's tasks failed"),
    }
}

pub(crate) async fn run(shared: Arc<Shared>, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let timeout = shared.config.disconnect_timeout;
    let first = tokio::time::timeout(timeout, rx.next()).await;
    let register = match first {
        Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<AgentMessage>(&t) {
            Ok(AgentMessage::Register(r)) => r,
            _ => {
                let _ = send(
                    &mut tx,
                    &error("BadRequest", "the first frame must be a register message"),
                )
                .await;
                return;
            }
        },
        _ => return,
    };
    if register.protocol_version != berth_proto::PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported (server speaks {})",
            register.protocol_version,
            berth_proto::PROTOCOL_VERSION
        );
        let _ = send(&mut tx, &error("UnsupportedVersion", &msg)).await;
        return;
    }
    let cluster = register.cluster.clone();
    let instance = match records::register(&shared.store, &shared.config.env, &register).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(cluster, error = %e, "agent registration refused");
            let _ = send(&mut tx, &error("Refused", &e.to_string())).await;
            return;
        }
    };
    let generation = shared.bump(&instance);
    tracing::info!(cluster, instance, agent = register.agent_id, "agent connected");
    let result = serve(&shared, &mut tx, &mut rx, &cluster, &instance).await;
    if let Err(e) = &result {
        tracing::warn!(cluster, instance, error = %e, "agent session ended with an error");
    }
    let _ = tx.close().await;
    if shared.generation(&instance) == generation {
        tracing::info!(cluster, instance, "agent disconnected");
        if let Err(e) = records::set_connected(&shared.store, &cluster, &instance, false).await {
            tracing::warn!(error = %e, "marking instance disconnected failed");
        }
        tokio::spawn(lost_timer(shared.clone(), cluster, instance, generation, false));
    }
}

fn error(code: &str, message: &str) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code: code.into(),
        message: message.into(),
    })
}

#[tracing::instrument(name = "agent_session", skip_all, fields(cluster = %cluster, instance = %instance))]
async fn serve(
    shared: &Arc<Shared>,
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    rx: &mut futures::stream::SplitStream<WebSocket>,
    cluster: &str,
    instance: &str,
) -> Result<(), GatewayError> {
    let store = &shared.store;
    let arns = &shared.config.arns;
    let ack = ServerMessage::RegisterAck(RegisterAck {
        container_instance_arn: berth_model::Arn::new(
            arns,
            berth_model::ResourceType::ContainerInstance,
            format!("{cluster}/{instance}"),
        )
        .to_string(),
        // At least three heartbeats fit in the timeout, whatever was configured.
        heartbeat_interval_ms: shared
            .config
            .heartbeat_interval
            .min(shared.config.disconnect_timeout / 3)
            .as_millis() as u64,
    });
    if !send(tx, &ack).await {
        return Ok(());
    }
    // What the agent was last told per task: its desired status.
    let mut told: HashMap<String, TaskStatus> = HashMap::new();
    let mut taskdefs = TaskDefs::default();
    let (tasks, revision) = records::tasks_on(store, cluster, instance).await?;
    let mut desired = Vec::new();
    for t in &tasks {
        if let Some(d) = records::desired_task(store, &mut taskdefs, arns, t).await? {
            told.insert(t.id.clone(), t.desired_status);
            desired.push(d);
        }
    }
    if !send(tx, &ServerMessage::DesiredTasks(DesiredTasks { tasks: desired })).await {
        return Ok(());
    }
    let mut watch = store.watch(keys::tasks(cluster).as_bytes(), revision + 1).await?;
    let mut deadline = Instant::now() + shared.config.disconnect_timeout;
    loop {
        tokio::select! {
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { return Ok(()) };
                deadline = Instant::now() + shared.config.disconnect_timeout;
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => return Ok(()),
                    _ => continue,
                };
                match serde_json::from_str::<AgentMessage>(&text) {
                    Ok(AgentMessage::Heartbeat(_)) => {}
                    Ok(AgentMessage::TaskStateChange(change)) => {
                        records::apply_state_change(store, &shared.config.env, cluster, instance, &change).await?;
                    }
                    Ok(AgentMessage::ContainerHealth(h)) => {
                        // Folded into a state change carrying the new health.
                        records::apply_health(store, cluster, instance, &h).await?;
                    }
                    Ok(AgentMessage::Register(_)) => {
                        let _ = send(tx, &error("BadRequest", "already registered")).await;
                    }
                    Err(e) => {
                        tracing::warn!(instance, error = %e, "undecodable agent frame ignored");
                    }
                }
            }
            batch = watch.next() => {
                let Some(batch) = batch else { return Ok(()) };
                let batch = batch?;
                for e in batch.events {
                    if e.kind != EventKind::Put {
                        continue;
                    }
                    let Ok(t) = serde_json::from_slice::<Task>(&e.kv.value) else { continue };
                    if t.container_instance.as_deref() != Some(instance) {
                        continue;
                    }
                    if told.get(&t.id) == Some(&t.desired_status) || t.last_status == TaskStatus::Stopped {
                        continue;
                    }
                    let update = if t.desired_status == TaskStatus::Stopped {
                        TaskUpdate::Stop { task_arn: task_arn(arns, cluster, &t.id), reason: t.stopped_reason.clone() }
                    } else {
                        match records::desired_task(store, &mut taskdefs, arns, &t).await? {
                            Some(d) => TaskUpdate::Add { task: d },
                            None => continue,
                        }
                    };
                    told.insert(t.id.clone(), t.desired_status);
                    if !send(tx, &ServerMessage::TaskUpdate(update)).await {
                        return Ok(());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(instance, "agent missed its heartbeats; closing its session");
                return Ok(());
            }
        }
    }
}
