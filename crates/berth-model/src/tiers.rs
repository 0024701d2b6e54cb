//! Capacity tiers and guarantees (the Titus model) as ECS tags, so that
//! every ECS client can set them:
//!
//! - `berth:tier` on RunTask's `tags` or CreateService's `tags`: `critical`
//!   (or `0`), placed first, or `flex` (or `1`, the default).
//! - `berth:guarantee:GROUP` on a cluster (CreateCluster `tags`,
//!   TagResource): capacity guaranteed to a task group (`service:NAME`,
//!   `family:NAME` or a RunTask `group`), as `tier=0,cpu=4096,memory=8192`
//!   (`tier` defaults to 1, `cpu` and `memory` to 0). Inside a tier, groups
//!   under their guarantee are placed first (dominant-resource share).

use crate::{Tag, ValidationError};

/// The tier of tasks that ask for none: flex.
pub const DEFAULT_TIER: u8 = 1;

/// The tag key that sets a task's or service's tier.
pub const TIER_TAG: &str = "berth:tier";
/// The prefix of cluster tags that set capacity guarantees.
pub const GUARANTEE_TAG: &str = "berth:guarantee:";

/// Capacity guaranteed to a task group on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityGuarantee {
    pub group: String,
    pub tier: u8,
    pub cpu: u64,
    pub memory_mib: u64,
}

/// The tier `tags` ask for (`None` when they do not), or which tag is wrong.
pub fn tier_from_tags(field: &str, tags: &[Tag]) -> Result<Option<u8>, ValidationError> {
    let Some((i, t)) = tags.iter().enumerate().find(|(_, t)| t.key == TIER_TAG) else {
        return Ok(None);
    };
    match t.value.as_str() {
        "0" | "critical" => Ok(Some(0)),
        "1" | "flex" => Ok(Some(1)),
        other => Err(ValidationError::new(
            format!("{field}[{i}].value"),
            format!("{TIER_TAG} must be critical (0) or flex (1), not '{other}'"),
        )),
    }
}

/// The guarantees a cluster's `tags` set, or which tag is wrong.
pub fn guarantees_from_tags(field: &str, tags: &[Tag]) -> Result<Vec<CapacityGuarantee>, ValidationError> {
    let mut out = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        let Some(group) = t.key.strip_prefix(GUARANTEE_TAG) else {
            continue;
        };
        let bad = |reason: String| ValidationError::new(format!("{field}[{i}]"), reason);
        if group.is_empty() {
            return Err(bad(format!("{GUARANTEE_TAG}GROUP needs a group name")));
        }
        let mut g = CapacityGuarantee {
            group: group.to_string(),
            tier: DEFAULT_TIER,
            cpu: 0,
            memory_mib: 0,
        };
        for part in t.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("'{part}' is not NAME=NUMBER (tier, cpu, memory)")))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("{}: '{}' is not a whole number", k.trim(), v.trim())))?;
            match k.trim() {
                "tier" if n <= 1 => g.tier = n as u8,
                "tier" => return Err(bad("tier must be 0 or 1".into())),
                "cpu" => g.cpu = n,
                "memory" => g.memory_mib = n,
                other => return Err(bad(format!("unknown resource '{other}' (tier, cpu, memory)"))),
            }
        }
        out.push(g);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn tiers_read_from_tags_name_the_bad_one() {
        assert_eq!(tier_from_tags("tags", &[]), Ok(None));
        assert_eq!(
            tier_from_tags("tags", &[tag("a", "b"), tag(TIER_TAG, "critical")]),
            Ok(Some(0))
        );
        assert_eq!(tier_from_tags("tags", &[tag(TIER_TAG, "1")]), Ok(Some(1)));
        let e = tier_from_tags("tags", &[tag("x", "y"), tag(TIER_TAG, "gold")]).unwrap_err();
        assert_eq!(e.field, "tags[1].value");
    }

    #[test]
    fn guarantees_parse_and_refuse_garbage() {
        let g = guarantees_from_tags(
            "tags",
            &[
                tag("other", "x"),
                tag("berth:guarantee:service:web", "tier=1, cpu=2048,memory=512"),
            ],
        )
        .unwrap();
        assert_eq!(
            g,
            vec![CapacityGuarantee {
                group: "service:web".into(),
                tier: 1,
                cpu: 2048,
                memory_mib: 512
            }]
        );
        for bad in ["cpu", "cpu=x", "disk=1", "tier=2"] {
            let e = guarantees_from_tags("tags", &[tag("berth:guarantee:g", bad)]).unwrap_err();
            assert_eq!(e.field, "tags[0]", "{bad}");
        }
        assert!(guarantees_from_tags("tags", &[tag("berth:guarantee:", "cpu=1")]).is_err());
    }
}
