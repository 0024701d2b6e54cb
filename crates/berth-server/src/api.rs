//! What every operation shares: the store handle, the caller's ARN context,
//! typed record reads, request decoding, pagination and name resolution.

use berth_model::{Arn, ArnContext, Cluster, ResourceType, Tag, Timestamp, short_name};
use berth_records::{Attempt, Budget, Change, Env, Stored};
use berth_store::{DynStore, KeyValue, RangeRequest, Revision};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::keys;

/// One request's view of the API: the store, the caller's region/account,
/// and the clock and ids records are stamped with.
#[derive(Clone)]
pub(crate) struct Api {
    pub store: DynStore,
    pub ctx: ArnContext,
    pub env: Env,
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    Ok(berth_records::to_json(v)?)
}

pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Stored<T>, ApiError> {
    Ok(Stored::from_kv(kv)?)
}

/// Decodes the request body into an operation's input; errors name the member.
pub(crate) fn input<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.split(" at line ").next().unwrap_or(&inner).to_string();
        if path == "." {
            ApiError::InvalidParameter(inner.replace("missing field", "missing required member"))
        } else {
            ApiError::InvalidParameter(format!(
                "{path}: {}",
                inner.replace("missing field", "missing required member")
            ))
        }
    })
}

pub(crate) fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if value < min || value > max {
        return Err(ApiError::invalid(
            field,
            format!("{value} is out of range; must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// `maxResults` within `[1, max]`, defaulting to `default`.
pub(crate) fn max_results(v: Option<i64>, default: usize, max: i64) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) => {
            check_range("maxResults", n, 1, max)?;
            Ok(n as usize)
        }
    }
}

pub(crate) fn tags_json(tags: &[Tag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| serde_json::json!({"key": t.key, "value": t.value}))
            .collect(),
    )
}

/// Validates request tags the way ECS does.
pub(crate) fn check_tags(field: &str, tags: &[Tag]) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::invalid(field, "at most 50 tags are allowed"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.key.is_empty() || t.key.len() > 128 {
            return Err(ApiError::invalid(
                &format!("{field}[{i}].key"),
                "must be 1 to 128 characters",
            ));
        }
        if t.value.len() > 256 {
            return Err(ApiError::invalid(
                &format!("{field}[{i}].value"),
                "must be at most 256 characters",
            ));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::invalid(
                &format!("{field}[{i}].key"),
                "the aws: prefix is reserved",
            ));
        }
    }
    // Berth's own tags (tiers and capacity guarantees) must parse.
    berth_model::tier_from_tags(field, tags)?;
    berth_model::guarantees_from_tags(field, tags)?;
    Ok(())
}

/// A page of keys: the records and the token for the next page.
pub(crate) struct Page {
    pub kvs: Vec<KeyValue>,
    pub next_token: Option<String>,
}

impl Api {
    pub fn now(&self) -> Timestamp {
        self.env.now()
    }

    pub fn new_id(&self) -> String {
        self.env.new_id()
    }

    /// Runs one compare-and-swap of this request (see
    /// [`berth_records::transact`]): `what` names the operation in the
    /// conflict error.
    pub async fn transact<R, F, Fut>(&self, what: &str, attempt: F) -> Result<R, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<R>, ApiError>>,
    {
        berth_records::transact(&self.store, Budget::DEFAULT, what, attempt).await
    }

    /// [`Api::transact`], also returning the commit's revision.
    pub async fn transact_at<R, F, Fut>(&self, what: &str, attempt: F) -> Result<(R, Option<Revision>), ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<R>, ApiError>>,
    {
        berth_records::transact_at(&self.store, Budget::DEFAULT, what, attempt).await
    }

    /// Updates one record (see [`berth_records::update`]).
    pub async fn update<T: berth_records::Record>(
        &self,
        key: &str,
        decide: impl FnMut(Option<&Stored<T>>) -> Result<Change<T>, ApiError>,
    ) -> Result<Option<Stored<T>>, ApiError> {
        berth_records::update(&self.store, key, Budget::DEFAULT, decide).await
    }

    pub fn arn(&self, resource: ResourceType, path: impl Into<String>) -> String {
        Arn::new(&self.ctx, resource, path).to_string()
    }

    pub fn cluster_arn(&self, name: &str) -> String {
        self.arn(ResourceType::Cluster, name)
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Stored<T>>, ApiError> {
        Ok(berth_records::get(&self.store, key).await?)
    }

    /// The cluster named by `input` (name or ARN; `default` when absent),
    /// which must be ACTIVE.
    pub async fn active_cluster(&self, input: Option<&str>) -> Result<Stored<Cluster>, ApiError> {
        let name = cluster_name(input)?;
        match self.get::<Cluster>(&keys::cluster(&name)).await? {
            Some(c) if c.value.status == "ACTIVE" => Ok(c),
            _ => Err(ApiError::ClusterNotFound),
        }
    }

    /// Tags stored for a resource path (`cluster/NAME`, `task/C/ID`, ...).
    pub async fn tags(&self, path: &str) -> Result<(Vec<Tag>, Revision), ApiError> {
        match self.store.get(keys::tags(path).as_bytes()).await? {
            Some(kv) => {
                let tags: Vec<Tag> = serde_json::from_slice(&kv.value)
                    .map_err(|e| ApiError::Server(format!("tags of {path} are not valid: {e}")))?;
                Ok((tags, kv.mod_revision))
            }
            None => Ok((Vec::new(), 0)),
        }
    }

    /// Up to `max` keys under `prefix` that pass `keep`, resuming after the
    /// key in `token`. The token is the last key examined, so pages stay
    /// stable while others write: a key is never repeated, and a key written
    /// behind the cursor is simply not seen by this walk.
    pub async fn page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max: usize,
        mut keep: impl FnMut(&KeyValue) -> bool,
    ) -> Result<Page, ApiError> {
        let mut after = match token {
            Some(t) => Some(decode_token(prefix, t)?),
            None => None,
        };
        let mut kvs = Vec::new();
        loop {
            let want = max - kvs.len();
            let mut req = RangeRequest::prefix(prefix.as_bytes()).limit(want.max(1));
            if let Some(a) = &after {
                req = req.after(a);
            }
            let resp = self.store.range(req).await?;
            let n = resp.kvs.len();
            for (i, kv) in resp.kvs.into_iter().enumerate() {
                after = Some(kv.key.to_vec());
                if keep(&kv) {
                    kvs.push(kv);
                    if kvs.len() == max {
                        // A token only when something may follow this key.
                        let next = (resp.more || i + 1 < n)
                            .then(|| after.as_deref().map(hex::encode))
                            .flatten();
                        return Ok(Page { kvs, next_token: next });
                    }
                }
            }
            if !resp.more || n == 0 {
                return Ok(Page { kvs, next_token: None });
            }
        }
    }
}

fn decode_token(prefix: &str, token: &str) -> Result<Vec<u8>, ApiError> {
    let bad = || ApiError::invalid("nextToken", "is not a token this call returned");
    let key = hex::decode(token).map_err(|_| bad())?;
    if !key.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok(key)
}

/// The cluster name for a `cluster` member (name or ARN; default `default`).
pub(crate) fn cluster_name(input: Option<&str>) -> Result<String, ApiError> {
    match input {
        None | Some("") => Ok("default".to_string()),
        Some(s) => Ok(short_name(s, ResourceType::Cluster, "cluster")?),
    }
}

/// An id or ARN of a task / container instance: `(cluster from the ARN, id)`.
/// Long ARNs carry the cluster (`task/CLUSTER/ID`); short ids and old-style
/// ARNs do not.
pub(crate) fn id_and_cluster(
    input: &str,
    resource: ResourceType,
    field: &str,
) -> Result<(Option<String>, String), ApiError> {
    if input.starts_with("arn:") {
        let arn = Arn::parse(input, field)?;
        if arn.resource != resource {
            return Err(ApiError::invalid(
                field,
                format!(
                    "expected a {} ARN, got a {} ARN",
                    resource.as_str(),
                    arn.resource.as_str()
                ),
            ));
        }
        let mut parts = arn.path.rsplitn(2, '/');
        let id = parts.next().unwrap_or_default().to_string();
        let cluster = parts.next().map(str::to_string);
        Ok((cluster, id))
    } else if input.is_empty() || input.contains('/') {
        Err(ApiError::invalid(field, format!("'{input}' is not an id or ARN")))
    } else {
        Ok((None, input.to_string()))
    }
}
