//! The one record codec: a typed value, the JSON members its type does not
//! carry (members written by newer code, or by a component that owns
//! them, such as the target controller's `berthTargetHealth` on a task),
//! and the revision it was read at. Rewriting a record through
//! [`Stored::encode`] keeps those members, so no writer erases what
//! another wrote.

use berth_store::{DynStore, KeyValue, Revision};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::RecordsError;

/// A record as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub value: T,
    /// The whole stored JSON object; members the model does not carry are
    /// written back by [`Stored::encode`].
    pub raw: Map<String, Value>,
    /// What a compare-and-swap of this record compares (0: not stored yet).
    pub mod_revision: Revision,
}

fn decode_error(key: &[u8], e: impl std::fmt::Display) -> RecordsError {
    RecordsError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

impl<T> Stored<T> {
    /// A record that is not stored yet (its compare is "missing").
    pub fn new(value: T) -> Self {
        Stored {
            value,
            raw: Map::new(),
            mod_revision: 0,
        }
    }

    /// A member the model does not carry.
    pub fn extra(&self, name: &str) -> Option<&Value> {
        self.raw.get(name)
    }
}

impl<T: DeserializeOwned> Stored<T> {
    /// Decodes `value` stored at `key`.
    pub fn decode(key: &[u8], value: &[u8], mod_revision: Revision) -> Result<Self, RecordsError> {
        let raw: Map<String, Value> = serde_json::from_slice(value).map_err(|e| decode_error(key, e))?;
        let value = T::deserialize(&Value::Object(raw.clone())).map_err(|e| decode_error(key, e))?;
        Ok(Stored {
            value,
            raw,
            mod_revision,
        })
    }

    pub fn from_kv(kv: &KeyValue) -> Result<Self, RecordsError> {
        Self::decode(&kv.key, &kv.value, kv.mod_revision)
    }
}

impl<T: Serialize> Stored<T> {
    /// The record's JSON: its value plus the members of `raw` the value
    /// does not have.
    pub fn encode(&self) -> Result<Vec<u8>, RecordsError> {
        encode(&self.value, &self.raw)
    }
}

/// JSON of `v` plus the members of `extras` it does not have.
pub fn encode<T: Serialize>(v: &T, extras: &Map<String, Value>) -> Result<Vec<u8>, RecordsError> {
    let mut out = serde_json::to_value(v).map_err(|e| RecordsError::Encode(e.to_string()))?;
    if let Value::Object(m) = &mut out {
        for (k, x) in extras {
            if !m.contains_key(k) {
                m.insert(k.clone(), x.clone());
            }
        }
    }
    serde_json::to_vec(&out).map_err(|e| RecordsError::Encode(e.to_string()))
}

/// JSON of a value with nothing to keep.
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, RecordsError> {
    serde_json::to_vec(v).map_err(|e| RecordsError::Encode(e.to_string()))
}

/// Reads and decodes the record at `key`.
pub async fn get<T: DeserializeOwned>(store: &DynStore, key: &str) -> Result<Option<Stored<T>>, RecordsError> {
    match store.get(key.as_bytes()).await? {
        Some(kv) => Ok(Some(Stored::from_kv(&kv)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Small {
        a: u32,
    }

    #[test]
    fn members_the_type_lacks_survive_a_rewrite() {
        let bytes = json!({"a": 1, "later": {"x": true}}).to_string();
        let mut s = Stored::<Small>::decode(b"/k", bytes.as_bytes(), 7).unwrap();
        assert_eq!((s.value.a, s.mod_revision), (1, 7));
        s.value.a = 2;
        let back: Value = serde_json::from_slice(&s.encode().unwrap()).unwrap();
        assert_eq!(back, json!({"a": 2, "later": {"x": true}}));
        let e = Stored::<Small>::decode(b"/k", b"{\"a\": \"x\"}", 1).unwrap_err();
        assert!(e.to_string().starts_with("record /k is not valid"), "{e}");
    }
}
