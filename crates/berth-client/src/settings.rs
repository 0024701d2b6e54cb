//! Where a call goes and how it is signed. Precedence, highest first:
//! command-line flags, environment variables, the Berth config file, then
//! defaults. Keys come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (unless a profile is named on the command line), else from the profile in
//! the AWS shared-credentials file; with neither, requests go unsigned
//! (fine against `berth server --no-auth`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";
pub const DEFAULT_REGION: &str = "us-east-1";

/// The Berth config file (`config.toml` in the platform config dir, or
/// `$BERTH_CONFIG`). Every member is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
    pub cluster: Option<String>,
    /// An AWS shared-credentials file (default `~/.aws/credentials`).
    pub credentials_file: Option<PathBuf>,
}

impl ConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ClientError> {
        toml::from_str(text).map_err(|e| ClientError::Settings(format!("config file {}: {e}", path.display())))
    }
}

/// What the command line says (each `None` when the flag was not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
    pub cluster: Option<String>,
}

/// An access key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Where they came from (`env`, `profile NAME in FILE`), for messages.
    pub source: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Everything a [`crate::Client`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub region: String,
    pub cluster: String,
    /// `None`: requests are sent unsigned.
    pub keys: Option<Keys>,
}

/// The platform config file: `$BERTH_CONFIG`, else `CONFIG_DIR/berth/config.toml`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("BERTH_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(x).join("berth").join("config.toml"));
    }
    dirs::config_dir().map(|d| d.join("berth").join("config.toml"))
}

/// The profiles of an AWS shared-credentials (or config) file:
/// `name -> key -> value`; `[profile x]` is read as `x`. Errors name the line.
pub fn parse_credentials(text: &str) -> Result<HashMap<String, HashMap<String, String>>, String> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: section header without ']'", n + 1))?
                .trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected 'key = value'", n + 1))?;
        let section = current
            .as_ref()
            .ok_or_else(|| format!("line {}: key outside of a [profile] section", n + 1))?;
        out.entry(section.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Ok(out)
}

impl Settings {
    /// Resolves settings from flags, `env` (a lookup, so tests need not touch
    /// the process environment), the config file at `config_path(env)` and
    /// the credentials file; `read` reads a file (`Ok(None)` when missing).
    pub fn resolve(
        flags: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&Path) -> std::io::Result<Option<String>>,
    ) -> Result<Settings, ClientError> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let config = match config_path(&env) {
            Some(path) => match read(&path) {
                Ok(Some(text)) => ConfigFile::parse(&text, &path)?,
                Ok(None) => ConfigFile::default(),
                Err(e) => return Err(ClientError::Settings(format!("reading {}: {e}", path.display()))),
            },
            None => ConfigFile::default(),
        };
        let endpoint = flags
            .endpoint
            .clone()
            .or_else(|| env("BERTH_ENDPOINT"))
            .or(config.endpoint.clone())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ClientError::Settings(format!(
                "endpoint '{endpoint}' must start with http:// or https://"
            )));
        }
        let cluster = flags
            .cluster
            .clone()
            .or_else(|| env("BERTH_CLUSTER"))
            .or(config.cluster.clone())
            .unwrap_or_else(|| "default".to_string());
        let profile_flag = flags.profile.clone();
        let env_keys = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) if profile_flag.is_none() => Some(Keys {
                access_key_id: id,
                secret_access_key: secret,
                source: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
            }),
            (Some(_), None) if profile_flag.is_none() => {
                return Err(ClientError::Settings(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ));
            }
            _ => None,
        };
        let named_profile = profile_flag
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .or(config.profile.clone());
        let (keys, profile_region) = match env_keys {
            Some(k) => (Some(k), None),
            None => {
                let file = env("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or(config.credentials_file.clone())
                    .or_else(|| dirs::home_dir().map(|h| h.join(".aws").join("credentials")));
                let text = match &file {
                    Some(f) => read(f).map_err(|e| ClientError::Settings(format!("reading {}: {e}", f.display())))?,
                    None => None,
                };
                let profiles = match (&text, &file) {
                    (Some(t), Some(f)) => {
                        parse_credentials(t).map_err(|e| ClientError::Settings(format!("{}: {e}", f.display())))?
                    }
                    _ => HashMap::new(),
                };
                let name = named_profile.clone().unwrap_or_else(|| "default".to_string());
                let where_ = file
                    .as_ref()
                    .map_or("(no credentials file)".into(), |f| f.display().to_string());
                match profiles.get(&name) {
                    Some(p) => match (p.get("aws_access_key_id"), p.get("aws_secret_access_key")) {
                        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => (
                            Some(Keys {
                                access_key_id: id.clone(),
                                secret_access_key: secret.clone(),
                                source: format!("profile {name} in {where_}"),
                            }),
                            p.get("region").cloned(),
                        ),
                        _ => {
                            return Err(ClientError::Settings(format!(
                                "profile '{name}' in {where_} has no aws_access_key_id / aws_secret_access_key"
                            )));
                        }
                    },
                    // Only a profile someone asked for by name must exist;
                    // without one, requests go unsigned.
                    None if named_profile.is_some() => {
                        return Err(ClientError::Settings(format!("profile '{name}' not found in {where_}")));
                    }
                    None => (None, None),
                }
            }
        };
        let region = flags
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or(config.region.clone())
            .or(profile_region)
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        Ok(Settings {
            endpoint,
            region,
            cluster,
            keys,
        })
    }

    /// [`Settings::resolve`] with the process environment and file system.
    pub fn from_env(flags: &Overrides) -> Result<Settings, ClientError> {
        let env = |k: &str| std::env::var(k).ok();
        let read = |p: &Path| match std::fs::read_to_string(p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        Settings::resolve(flags, &env, &read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: Overrides, env: &[(&str, &str)], files: &[(&str, &str)]) -> Result<Settings, ClientError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let files: HashMap<PathBuf, String> = files.iter().map(|(k, v)| (PathBuf::from(k), v.to_string())).collect();
        let mut env2 = env.clone();
        env2.entry("BERTH_CONFIG".into()).or_insert("/cfg/config.toml".into());
        env2.entry("AWS_SHARED_CREDENTIALS_FILE".into())
            .or_insert("/aws/credentials".into());
        Settings::resolve(&flags, &|k| env2.get(k).cloned(), &|p| Ok(files.get(p).cloned()))
    }

    const CREDS: &str = "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = s1\n\
                         [profile dev]\naws_access_key_id=AKDEV\naws_secret_access_key=s2\nregion = eu-west-1\n";

    #[test]
    fn defaults_without_anything() {
        let s = resolve(Overrides::default(), &[], &[]).unwrap();
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.region, DEFAULT_REGION);
        assert_eq!(s.cluster, "default");
        assert!(s.keys.is_none());
    }

    #[test]
    fn flags_beat_env_beat_config() {
        let cfg = "endpoint = \"http://cfg:1\"\ncluster = \"c-cfg\"\nregion = \"ap-south-1\"\n";
        let files = [("/cfg/config.toml", cfg)];
        let s = resolve(Overrides::default(), &[], &files).unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.cluster.as_str(), s.region.as_str()),
            ("http://cfg:1", "c-cfg", "ap-south-1")
        );
        let env = [("BERTH_ENDPOINT", "http://env:2/"), ("BERTH_CLUSTER", "c-env")];
        let s = resolve(Overrides::default(), &env, &files).unwrap();
        assert_eq!((s.endpoint.as_str(), s.cluster.as_str()), ("http://env:2", "c-env"));
        let flags = Overrides {
            endpoint: Some("http://flag:3".into()),
            cluster: Some("c-flag".into()),
            ..Default::default()
        };
        let s = resolve(flags, &env, &files).unwrap();
        assert_eq!((s.endpoint.as_str(), s.cluster.as_str()), ("http://flag:3", "c-flag"));
    }

    #[test]
    fn keys_from_env_then_profiles() {
        let files = [("/aws/credentials", CREDS)];
        let s = resolve(Overrides::default(), &[], &files).unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKDEF");
        let env = [("AWS_ACCESS_KEY_ID", "AKENV"), ("AWS_SECRET_ACCESS_KEY", "x")];
        let s = resolve(Overrides::default(), &env, &files).unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKENV");
        // A profile named on the command line wins over env keys, and brings its region.
        let flags = Overrides {
            profile: Some("dev".into()),
            ..Default::default()
        };
        let s = resolve(flags, &env, &files).unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKDEV");
        assert_eq!(s.region, "eu-west-1");
        let s = resolve(
            Overrides::default(),
            &[("AWS_PROFILE", "dev"), ("AWS_REGION", "us-west-2")],
            &files,
        )
        .unwrap();
        assert_eq!(s.keys.unwrap().access_key_id, "AKDEV");
        assert_eq!(s.region, "us-west-2");
    }

    #[test]
    fn named_profile_must_exist_and_bad_files_are_errors() {
        let files = [("/aws/credentials", CREDS)];
        let e = resolve(Overrides::default(), &[("AWS_PROFILE", "nope")], &files).unwrap_err();
        assert!(e.to_string().contains("profile 'nope' not found"), "{e}");
        let e = resolve(Overrides::default(), &[], &[("/cfg/config.toml", "endpoint = 5")]).unwrap_err();
        assert!(e.to_string().contains("config file /cfg/config.toml"), "{e}");
        let e = resolve(Overrides::default(), &[], &[("/cfg/config.toml", "colour = \"red\"")]).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = resolve(Overrides::default(), &[("BERTH_ENDPOINT", "localhost:8080")], &[]).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(parse_credentials("k = v").unwrap_err().contains("line 1"));
    }
}
