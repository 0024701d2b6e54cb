//! Helpers shared by the controllers for reading and writing records:
//! JSON that keeps a record's extra members, and a task definition cache
//! (task definitions are immutable once registered).

use std::collections::HashMap;

use berth_model::{Task, TaskDefinition};
use berth_server::keys;
use berth_store::{CmpOp, Compare, DynStore, Op, TxnRequest};
use serde_json::{Map, Value};

use crate::ControlError;
use crate::cache::Cached;

/// JSON of `v`, keeping the members of `extras` the model does not carry.
pub(crate) fn to_json(v: &impl serde::Serialize, extras: &Map<String, Value>) -> Result<Vec<u8>, ControlError> {
    let mut out = serde_json::to_value(v).map_err(|e| ControlError::Encode(e.to_string()))?;
    if let Value::Object(m) = &mut out {
        for (k, x) in extras {
            m.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    serde_json::to_vec(&out).map_err(|e| ControlError::Encode(e.to_string()))
}

/// A transaction that replaces task `old` (as cached) with `new`, only if
/// the stored task is still the one cached, keeping its extra members and
/// the ListTasks indexes in step.
pub(crate) fn task_write(cluster: &str, old: &Cached<Task>, new: &Task) -> Result<TxnRequest, ControlError> {
    let key = keys::task(cluster, &new.id);
    let mut txn = TxnRequest::new()
        .when(Compare::mod_revision(&key, CmpOp::Equal, old.mod_revision))
        .then(Op::put(&key, to_json(new, &old.raw)?));
    for op in keys::task_index_ops(Some(&old.value), Some(new)) {
        txn = txn.then(op);
    }
    Ok(txn)
}

/// The `family` and `revision` of a task definition ARN.
pub(crate) fn family_revision(arn: &str) -> Option<(String, u32)> {
    let tail = arn.rsplit('/').next()?;
    let (family, rev) = tail.rsplit_once(':')?;
    Some((family.to_string(), rev.parse().ok()?))
}

/// Task definitions by ARN, read once.
#[derive(Default)]
pub(crate) struct TaskDefs {
    cache: HashMap<String, TaskDefinition>,
}

impl TaskDefs {
    pub(crate) async fn get(&mut self, store: &DynStore, arn: &str) -> Result<Option<TaskDefinition>, ControlError> {
        if let Some(td) = self.cache.get(arn) {
            return Ok(Some(td.clone()));
        }
        let Some((family, rev)) = family_revision(arn) else {
            return Ok(None);
        };
        let Some(kv) = store.get(keys::taskdef(&family, rev).as_bytes()).await? else {
            return Ok(None);
        };
        let td: TaskDefinition = serde_json::from_slice(&kv.value).map_err(|e| ControlError::Decode(e.to_string()))?;
        self.cache.insert(arn.to_string(), td.clone());
        Ok(Some(td))
    }
}
