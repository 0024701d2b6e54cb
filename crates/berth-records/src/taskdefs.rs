//! Task definitions by ARN, read once: they are immutable once registered.

use std::collections::HashMap;

use berth_model::TaskDefinition;
use berth_store::DynStore;

use crate::{RecordsError, codec, keys};

/// A reader's cache of task definitions.
#[derive(Debug, Default)]
pub struct TaskDefs {
    cache: HashMap<String, TaskDefinition>,
}

impl TaskDefs {
    /// The definition an ARN (or `family:revision`) names, if registered.
    pub async fn get(&mut self, store: &DynStore, arn: &str) -> Result<Option<TaskDefinition>, RecordsError> {
        if let Some(td) = self.cache.get(arn) {
            return Ok(Some(td.clone()));
        }
        let Some((family, rev)) = keys::family_revision(arn) else {
            return Ok(None);
        };
        let Some(td) = codec::get::<TaskDefinition>(store, &keys::taskdef(family, rev)).await? else {
            return Ok(None);
        };
        self.cache.insert(arn.to_string(), td.value.clone());
        Ok(Some(td.value))
    }
}
