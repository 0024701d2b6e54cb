//! Records written by earlier versions read back unchanged. The fixture was
//! dumped from the store by the code before tasks had typed overrides,
//! placement and network members: a RunTask with container and task-level
//! overrides, constraints and strategies; an `awsvpc` RunTask; a StartTask;
//! a service; their cluster, instance and task definitions.

#![allow(clippy::unwrap_used)]

use berth_model::{Cluster, ContainerInstance, Service, Task, TaskDefinition};
use berth_records::{Stored, keys};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

const FIXTURE: &str = include_str!("fixtures/records-v1.json");

/// Decodes a record as `T` and encodes it again.
fn round_trip<T: DeserializeOwned + Serialize>(key: &str, value: &Value) -> (T, Value) {
    let bytes = serde_json::to_vec(value).unwrap();
    let stored = Stored::<T>::decode(key.as_bytes(), &bytes, 1).unwrap();
    let again: Value = serde_json::from_slice(&stored.encode().unwrap()).unwrap();
    (stored.value, again)
}

fn records() -> Map<String, Value> {
    serde_json::from_str(FIXTURE).unwrap()
}

#[test]
fn every_old_record_reads_and_rewrites_unchanged() {
    let mut seen = 0;
    for (key, value) in records() {
        let again = if key.starts_with(keys::TASKS) {
            round_trip::<Task>(&key, &value).1
        } else if key.starts_with(keys::INSTANCES) {
            round_trip::<ContainerInstance>(&key, &value).1
        } else if key.starts_with(keys::SERVICES) {
            round_trip::<Service>(&key, &value).1
        } else if key.starts_with(keys::CLUSTERS) {
            round_trip::<Cluster>(&key, &value).1
        } else if key.starts_with("/taskdefs/") {
            round_trip::<TaskDefinition>(&key, &value).1
        } else {
            continue;
        };
        assert_eq!(again, value, "{key} changed on a rewrite");
        seen += 1;
    }
    assert_eq!(
        seen, 8,
        "records checked: 3 tasks, 2 task definitions, a cluster, an instance, a service"
    );
}

#[test]
fn old_task_records_fill_the_typed_members() {
    let tasks: Vec<Task> = records()
        .into_iter()
        .filter(|(k, _)| k.starts_with(keys::TASKS))
        .map(|(k, v)| round_trip::<Task>(&k, &v).0)
        .collect();
    let run = tasks
        .iter()
        .find(|t| t.started_by.as_deref() == Some("fixture"))
        .unwrap();
    let ov = run.overrides.as_ref().unwrap();
    assert_eq!((ov.cpu.as_deref(), ov.memory.as_deref()), (Some("1024"), Some("2048")));
    let app = &ov.container_overrides[0];
    assert_eq!(app.name.as_deref(), Some("app"));
    assert_eq!(
        app.command.as_deref(),
        Some(&["echo".to_string(), "hi".to_string()][..])
    );
    let env = app.environment.as_ref().unwrap();
    assert_eq!((env[0].name.as_str(), env[0].value.as_str()), ("B", "2"));
    assert_eq!(run.placement_constraints.len(), 1);
    assert_eq!(run.placement_constraints[0].kind, "memberOf");
    let kinds: Vec<&str> = run.placement_strategy.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["spread", "binpack"]);
    assert!(run.network_configuration.is_none());

    let vpc = tasks
        .iter()
        .find(|t| t.task_definition_arn.ends_with("/vpc:1"))
        .unwrap();
    let nc = vpc.network_configuration.as_ref().unwrap();
    assert_eq!(nc.security_groups(), ["sg-1", "sg-2"]);
    assert!(vpc.placement_constraints.is_empty() && vpc.placement_strategy.is_empty());

    let placed = tasks.iter().find(|t| t.container_instance.is_some()).unwrap();
    assert_eq!(placed.overrides.as_ref().unwrap().container_overrides.len(), 0);
    assert_eq!(placed.containers[0].network_bindings[0].host_port, 32768);
}
