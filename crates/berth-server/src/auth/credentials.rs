//! Access keys from an AWS shared-credentials file, so the same file works for
//! the aws CLI:
//!
//! ```ini
//! [default]
//! aws_access_key_id = AKIDEXAMPLE
//! aws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
//! # optional, Berth only: operations this key may call (default: all)
//! berth_allowed_operations = DescribeTasks, ListTasks
//! ```

use std::collections::{BTreeSet, HashMap};

/// One access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub profile: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `None`: every operation.
    pub allowed_operations: Option<BTreeSet<String>>,
}

impl AccessKey {
    pub fn allows(&self, operation: &str) -> bool {
        self.allowed_operations
            .as_ref()
            .is_none_or(|ops| ops.contains(operation))
    }
}

/// Every key the server accepts, by access key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    keys: HashMap<String, AccessKey>,
}

impl Credentials {
    /// Parses the INI text; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut profiles: Vec<(String, HashMap<String, String>)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {}: section header without ']'", n + 1))?;
                let name = name.trim().strip_prefix("profile ").unwrap_or(name.trim());
                profiles.push((name.trim().to_string(), HashMap::new()));
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected 'key = value'", n + 1))?;
            let Some((_, section)) = profiles.last_mut() else {
                return Err(format!("line {}: key outside of a [profile] section", n + 1));
            };
            section.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let mut keys = HashMap::new();
        for (profile, section) in profiles {
            let (Some(id), Some(secret)) = (section.get("aws_access_key_id"), section.get("aws_secret_access_key"))
            else {
                continue;
            };
            if id.is_empty() || secret.is_empty() {
                return Err(format!("profile [{profile}]: empty access key id or secret"));
            }
            let allowed_operations = section.get("berth_allowed_operations").and_then(|ops| {
                let set: BTreeSet<String> = ops
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                (!set.contains("*")).then_some(set)
            });
            keys.insert(
                id.clone(),
                AccessKey {
                    profile,
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    allowed_operations,
                },
            );
        }
        if keys.is_empty() {
            return Err("no profile with aws_access_key_id and aws_secret_access_key".into());
        }
        Ok(Credentials { keys })
    }

    pub fn get(&self, access_key_id: &str) -> Option<&AccessKey> {
        self.keys.get(access_key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles_and_allowed_operations() {
        let c = Credentials::parse(
            "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\n\
             [profile ro]\naws_access_key_id=AK2\naws_secret_access_key=s2\n\
             berth_allowed_operations = DescribeTasks, ListTasks\n[empty]\nregion=x\n",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.get("AK1").unwrap().allows("RunTask"));
        let ro = c.get("AK2").unwrap();
        assert_eq!(ro.profile, "ro");
        assert!(ro.allows("ListTasks") && !ro.allows("RunTask"));
        assert!(Credentials::parse("aws_access_key_id = x").is_err());
        assert!(Credentials::parse("[a]\nregion = x\n").is_err());
    }
}
