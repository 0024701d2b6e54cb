//! The wire messages between `berth agent` and `berth server`: one
//! long-lived WebSocket per agent at `GET {server}/v1/agent/stream`, the join
//! token in `Authorization: Bearer <token>`, one JSON object per text frame,
//! tagged by `"type"`.
//!
//! This crate owns only the shapes and their documented meaning; it depends
//! on `berth-model` and `serde` and does no I/O.
//!
//! # Why a server-push WebSocket
//!
//! Placement must reach an agent in milliseconds, so the server pushes: the
//! agent never polls. A WebSocket gives one full-duplex, ordered stream over
//! plain HTTP/1.1 (the server's axum router can upgrade it next to the ECS
//! API, and the same TLS and bearer-token story applies), with JSON frames
//! that are readable in logs and need no code generation. gRPC streaming would
//! need a second listener and protobuf tooling for no gain at this scale.
//!
//! # The conversation
//!
//! 1. Agent → [`AgentMessage::Register`] (first frame, always). It carries the
//!    instance ARN the agent was given before, if any, so a restarted agent
//!    keeps its container instance.
//! 2. Server → [`ServerMessage::RegisterAck`] with the container instance ARN
//!    and the heartbeat interval, then at once [`ServerMessage::DesiredTasks`]:
//!    the *full* set of tasks the server wants on this instance (running or
//!    to be stopped). The agent converges to it idempotently by task id:
//!    tasks missing from a full set are stopped and forgotten.
//! 3. Afterwards the server sends [`ServerMessage::TaskUpdate`] for each
//!    change (a task placed, a task to stop), and may send a fresh
//!    `DesiredTasks` at any time (e.g. after its own restart). Delivery is at
//!    least once: repeating a message is harmless.
//! 4. The agent sends [`AgentMessage::Heartbeat`] every interval, and
//!    [`AgentMessage::TaskStateChange`] / [`AgentMessage::ContainerHealth`]
//!    whenever something changes. After every (re)connect it re-sends the
//!    current state of every task it knows, so the server must accept
//!    repeated and already-known states (statuses only move forward).
//! 5. [`ServerMessage::Error`] carries a refusal; the server then closes.

use berth_model::{HealthStatus, NetworkBinding, Protocol, Resources, TaskDefinition, TaskStatus, Timestamp};
use serde::{Deserialize, Serialize};

/// The protocol revision; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path the agent connects to (appended to the server URL).
pub const STREAM_PATH: &str = "/v1/agent/stream";

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    Register(Register),
    Heartbeat(Heartbeat),
    TaskStateChange(TaskStateChange),
    ContainerHealth(ContainerHealth),
}

/// Frames the server sends.
// One value per frame, decoded and dropped: boxing the big variant would
// only cost an allocation and make construction noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    RegisterAck(RegisterAck),
    DesiredTasks(DesiredTasks),
    TaskUpdate(TaskUpdate),
    Error(ErrorMessage),
}

/// What the agent says about itself when it connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    pub protocol_version: u32,
    pub cluster: String,
    /// The ARN this agent was registered under before (kept in its state
    /// dir); the server should reuse that instance when it still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// A stable id of this agent's state dir, unique per agent on a host.
    pub agent_id: String,
    pub hostname: String,
    /// Total registered capacity (cpu units, memory MiB, ...).
    pub resources: Resources,
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
    /// Inclusive dynamic host port range the scheduler may allocate from.
    pub port_range: (u16, u16),
    /// IP addresses tasks' host ports are reachable on.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    pub agent_version: String,
    /// `docker` or `process`.
    pub driver: String,
    /// e.g. `healthcheck`, `oom-detection`, `cgroup-limits`, `image-load`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Where the agent's introspection endpoint listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAck {
    pub container_instance_arn: String,
    /// How often the agent must send a heartbeat.
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub timestamp: Timestamp,
    /// Number of tasks the agent is running.
    pub running_tasks: u32,
}

/// One host port the scheduler assigned to a container's port mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortAssignment {
    pub container_name: String,
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A task the server wants on this agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTask {
    pub task_arn: String,
    pub cluster: String,
    /// RUNNING or STOPPED.
    pub desired_status: TaskStatus,
    pub task_definition: TaskDefinition,
    /// Host ports for every port mapping, static ones included.
    #[serde(default)]
    pub host_ports: Vec<PortAssignment>,
    /// Why the server wants it stopped (becomes `stoppedReason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

impl DesiredTask {
    /// The task id: the last segment of its ARN.
    pub fn task_id(&self) -> &str {
        self.task_arn.rsplit('/').next().unwrap_or(&self.task_arn)
    }
}

/// The full desired set; anything the agent has that is not here is stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTasks {
    pub tasks: Vec<DesiredTask>,
}

/// One change: start a placed task, or stop one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum TaskUpdate {
    /// Run this task (ignored when the agent already has it).
    Add { task: DesiredTask },
    /// Stop this task (ignored when unknown or already stopped).
    Stop {
        task_arn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// One container's state inside a [`TaskStateChange`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    pub last_status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub health_status: HealthStatus,
}

/// The whole state of one task, sent on every change (not a delta, so a lost
/// or repeated frame never leaves the server wrong).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStateChange {
    pub task_arn: String,
    pub last_status: TaskStatus,
    pub containers: Vec<ContainerState>,
    #[serde(default)]
    pub health_status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    /// `TaskFailedToStart`, `EssentialContainerExited`, `UserInitiated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
}

/// A container's health changed (also folded into the next state change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerHealth {
    pub task_arn: String,
    pub container_name: String,
    pub health_status: HealthStatus,
    /// The task's health after this change.
    pub task_health_status: HealthStatus,
    /// Output of the last check, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    /// e.g. `Unauthorized`, `ClusterNotFound`, `BadRequest`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let m = ServerMessage::TaskUpdate(TaskUpdate::Stop {
            task_arn: "arn:aws:ecs:r:1:task/c/abc".into(),
            reason: Some("Scaling".into()),
        });
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"type":"taskUpdate","action":"stop","taskArn":"arn:aws:ecs:r:1:task/c/abc","reason":"Scaling"}"#
        );
        assert_eq!(serde_json::from_str::<ServerMessage>(&s).unwrap(), m);
        let hb = AgentMessage::Heartbeat(Heartbeat {
            timestamp: 1.5,
            running_tasks: 2,
        });
        let s = serde_json::to_string(&hb).unwrap();
        assert!(s.starts_with(r#"{"type":"heartbeat""#), "{s}");
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn task_id_is_the_last_arn_segment() {
        let t: DesiredTask = serde_json::from_str(
            r#"{"taskArn":"arn:aws:ecs:us-east-1:1:task/default/t1","cluster":"default","desiredStatus":"RUNNING",
                "taskDefinition":{"family":"f","revision":1,"taskDefinitionArn":"x",
                  "containerDefinitions":[{"name":"a","image":"i","memory":64}]}}"#,
        )
        .unwrap();
        assert_eq!(t.task_id(), "t1");
        assert!(t.host_ports.is_empty());
    }
}
