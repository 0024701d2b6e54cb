//! docker-compose → ECS task definition, the way ecs-cli does it: one
//! project is one task definition (family = project name) with one
//! container per compose service. Pure: the caller reads the compose file
//! and supplies a reader for `env_file`s, so this is unit-tested without a
//! file system.
//!
//! Supported service keys: `image`, `command`, `entrypoint`, `environment`,
//! `env_file`, `ports`, `deploy.replicas`, `deploy.resources.limits` and
//! `.reservations` (`cpus`, `memory`), `healthcheck`, `depends_on`. Any
//! other key produces a warning that names it; nothing is dropped silently.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ClientError;

/// Memory (MiB) a container gets when the file sets no limit or
/// reservation (ecs-cli's default).
pub const DEFAULT_MEMORY_MIB: u32 = 512;

/// The result of a translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub project: String,
    /// A `RegisterTaskDefinition` request body.
    pub task_definition: Value,
    /// Tasks a service of this project should run (the largest
    /// `deploy.replicas`, default 1).
    pub replicas: u32,
    /// One line per ignored key or lossy choice.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, Option<serde_yaml::Value>>),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnLong>),
}

#[derive(Deserialize)]
struct DependsOnLong {
    condition: Option<String>,
}

#[derive(Deserialize)]
struct Limits {
    cpus: Option<serde_yaml::Value>,
    memory: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct Resources {
    limits: Option<Limits>,
    reservations: Option<Limits>,
}

#[derive(Deserialize)]
struct Deploy {
    replicas: Option<u32>,
    resources: Option<Resources>,
}

#[derive(Deserialize)]
struct Healthcheck {
    test: Option<StrOrList>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
    disable: Option<bool>,
}

#[derive(Deserialize)]
struct Service {
    image: Option<String>,
    command: Option<StrOrList>,
    entrypoint: Option<StrOrList>,
    environment: Option<Environment>,
    env_file: Option<StrOrList>,
    ports: Option<Vec<serde_yaml::Value>>,
    deploy: Option<Deploy>,
    healthcheck: Option<Healthcheck>,
    depends_on: Option<DependsOn>,
}

#[derive(Deserialize)]
struct ComposeFile {
    name: Option<String>,
    services: Option<BTreeMap<String, Service>>,
}

/// Keys understood at each level; everything else is warned about.
const TOP_KEYS: &[&str] = &["version", "name", "services"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "deploy",
    "healthcheck",
    "depends_on",
];
const DEPLOY_KEYS: &[&str] = &["replicas", "resources"];
const RESOURCES_KEYS: &[&str] = &["limits", "reservations"];
const LIMIT_KEYS: &[&str] = &["cpus", "memory"];
const HEALTH_KEYS: &[&str] = &["test", "interval", "timeout", "retries", "start_period", "disable"];

fn input_error(file: &str, message: impl Into<String>) -> ClientError {
    ClientError::Input {
        location: file.to_string(),
        message: message.into(),
    }
}

/// A serde_yaml error as `FILE:LINE:COLUMN` plus the message without its
/// trailing "at line N column M".
fn yaml_error(file: &str, e: &serde_yaml::Error) -> ClientError {
    let text = e.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text).to_string();
    let location = match e.location() {
        Some(l) => format!("{file}: line {}, column {}", l.line(), l.column()),
        None => file.to_string(),
    };
    ClientError::Input { location, message }
}

/// A compose project name: lower-case letters, digits, `-` and `_`.
pub fn sanitize_project(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if s.is_empty() { "default".into() } else { s }
}

fn warn_unknown(v: &serde_yaml::Value, path: &str, known: &[&str], warnings: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for k in m.keys() {
            let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            if !known.contains(&k.as_str()) && !k.starts_with("x-") {
                let at = if path.is_empty() { k } else { format!("{path}.{k}") };
                warnings.push(format!("{at} is not supported by Berth and is ignored"));
            }
        }
    }
}

fn warn_unknown_keys(root: &serde_yaml::Value, warnings: &mut Vec<String>) {
    warn_unknown(root, "", TOP_KEYS, warnings);
    let Some(serde_yaml::Value::Mapping(services)) = root.get("services") else {
        return;
    };
    for (name, svc) in services {
        let p = format!("services.{}", name.as_str().unwrap_or("?"));
        warn_unknown(svc, &p, SERVICE_KEYS, warnings);
        if let Some(d) = svc.get("deploy") {
            warn_unknown(d, &format!("{p}.deploy"), DEPLOY_KEYS, warnings);
            if let Some(r) = d.get("resources") {
                warn_unknown(r, &format!("{p}.deploy.resources"), RESOURCES_KEYS, warnings);
                for which in ["limits", "reservations"] {
                    if let Some(l) = r.get(which) {
                        warn_unknown(l, &format!("{p}.deploy.resources.{which}"), LIMIT_KEYS, warnings);
                    }
                }
            }
        }
        if let Some(h) = svc.get("healthcheck") {
            warn_unknown(h, &format!("{p}.healthcheck"), HEALTH_KEYS, warnings);
        }
        if let Some(serde_yaml::Value::Mapping(deps)) = svc.get("depends_on") {
            for (dep, long) in deps {
                warn_unknown(
                    long,
                    &format!("{p}.depends_on.{}", dep.as_str().unwrap_or("?")),
                    &["condition"],
                    warnings,
                );
            }
        }
    }
}

/// Splits a command line the way a POSIX shell splits words (quotes and
/// backslashes; no expansion).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err(format!("trailing \\ in {s:?}")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err(format!("trailing \\ in {s:?}")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Seconds in a compose duration (`1m30s`, `10s`, `500ms`, `1h`), rounded up.
pub fn parse_duration_secs(s: &str) -> Result<u32, String> {
    let bad = || format!("'{s}' is not a duration such as 30s or 1m30s");
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    if s.trim().is_empty() {
        return Err(bad());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let ms = match unit.as_str() {
            "h" => n * 3_600_000.0,
            "m" => n * 60_000.0,
            "s" => n * 1000.0,
            "ms" => n,
            "us" | "µs" => n / 1000.0,
            _ => return Err(bad()),
        };
        total_ms += ms.ceil() as u64;
    }
    if !num.is_empty() {
        // A bare number is seconds.
        let n: f64 = num.parse().map_err(|_| bad())?;
        total_ms += (n * 1000.0).ceil() as u64;
    }
    u32::try_from(total_ms.div_ceil(1000)).map_err(|_| bad())
}

/// MiB in a compose memory size (`512m`, `1g`, `1.5G`, `262144k`, bytes).
pub fn parse_memory_mib(v: &serde_yaml::Value) -> Result<u32, String> {
    let s = match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.trim().to_ascii_lowercase(),
        other => return Err(format!("{other:?} is not a memory size")),
    };
    let bad = || format!("'{s}' is not a memory size such as 512M or 1G");
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: f64 = digits.parse().map_err(|_| bad())?;
    let mib = match unit {
        "" | "b" => n / (1024.0 * 1024.0),
        "k" | "kb" | "kib" => n / 1024.0,
        "m" | "mb" | "mib" => n,
        "g" | "gb" | "gib" => n * 1024.0,
        _ => return Err(bad()),
    };
    if mib < 1.0 {
        return Err(format!("'{s}' is less than 1 MiB"));
    }
    u32::try_from(mib.ceil() as u64).map_err(|_| bad())
}

/// CPU units (1024 per core) for compose `cpus` (`"0.5"` or `2`).
pub fn parse_cpus(v: &serde_yaml::Value) -> Result<u32, String> {
    let n: f64 = match v {
        serde_yaml::Value::Number(n) => n.as_f64().unwrap_or(-1.0),
        serde_yaml::Value::String(s) => s.trim().parse().unwrap_or(-1.0),
        _ => -1.0,
    };
    if !(0.0..=10_240.0).contains(&n) {
        return Err(format!("{v:?} is not a number of CPUs such as 0.5"));
    }
    Ok((n * 1024.0).round() as u32)
}

/// One compose `ports` entry as an ECS port mapping.
fn port_mapping(v: &serde_yaml::Value, at: &str, warnings: &mut Vec<String>) -> Result<Value, String> {
    let port = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{at}: '{s}' is not a port (ranges are not supported)"))
    };
    match v {
        serde_yaml::Value::Number(n) => {
            let p = port(&n.to_string())?;
            Ok(json!({"containerPort": p, "hostPort": 0, "protocol": "tcp"}))
        }
        serde_yaml::Value::String(s) => {
            let (spec, proto) = match s.rsplit_once('/') {
                Some((spec, proto)) => (spec, proto.to_ascii_lowercase()),
                None => (s.as_str(), "tcp".to_string()),
            };
            if proto != "tcp" && proto != "udp" {
                return Err(format!("{at}: protocol '{proto}' is not tcp or udp"));
            }
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            let (container, host) = match parts.as_slice() {
                [c] => (port(c)?, 0),
                [c, h] => (port(c)?, port(h)?),
                [c, h, ip] => {
                    warnings.push(format!("{at}: host IP {ip} is ignored; ports bind on the instance"));
                    (port(c)?, if h.is_empty() { 0 } else { port(h)? })
                }
                _ => return Err(format!("{at}: '{s}' is not a port mapping")),
            };
            Ok(json!({"containerPort": container, "hostPort": host, "protocol": proto}))
        }
        serde_yaml::Value::Mapping(m) => {
            let get = |k: &str| m.get(serde_yaml::Value::String(k.into()));
            let target = match get("target") {
                Some(serde_yaml::Value::Number(n)) => port(&n.to_string())?,
                Some(serde_yaml::Value::String(s)) => port(s)?,
                _ => return Err(format!("{at}.target: is required")),
            };
            let published = match get("published") {
                None => 0,
                Some(serde_yaml::Value::Number(n)) => port(&n.to_string())?,
                Some(serde_yaml::Value::String(s)) => port(s)?,
                Some(_) => return Err(format!("{at}.published: is not a port")),
            };
            let proto = get("protocol")
                .and_then(|p| p.as_str())
                .unwrap_or("tcp")
                .to_ascii_lowercase();
            if proto != "tcp" && proto != "udp" {
                return Err(format!("{at}.protocol: '{proto}' is not tcp or udp"));
            }
            for k in m.keys().filter_map(|k| k.as_str()) {
                if !matches!(k, "target" | "published" | "protocol") {
                    warnings.push(format!("{at}.{k} is not supported by Berth and is ignored"));
                }
            }
            Ok(json!({"containerPort": target, "hostPort": published, "protocol": proto}))
        }
        other => Err(format!("{at}: {other:?} is not a port mapping")),
    }
}

fn scalar_string(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Null => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// `KEY=VALUE` lines of an env file (`#` comments, optional `export `,
/// optional surrounding quotes).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

fn words(v: &StrOrList, at: &str) -> Result<Vec<String>, String> {
    match v {
        StrOrList::List(l) => Ok(l.clone()),
        StrOrList::Str(s) => split_words(s).map_err(|e| format!("{at}: {e}")),
    }
}

/// Translates compose `text` (named `file` in messages). `project` is the
/// `-p` flag; else the file's `name:`; else `default_project` (the
/// directory name). `read_env_file` returns an env file's text by the path
/// written in the compose file.
pub fn translate(
    text: &str,
    file: &str,
    project: Option<&str>,
    default_project: &str,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Translation, ClientError> {
    let root: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
    if !root.is_mapping() {
        return Err(input_error(
            file,
            "a compose file must be a mapping with a 'services' key",
        ));
    }
    let parsed: ComposeFile = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let mut warnings = Vec::new();
    warn_unknown_keys(&root, &mut warnings);
    let project = sanitize_project(project.or(parsed.name.as_deref()).unwrap_or(default_project));
    let services = parsed.services.unwrap_or_default();
    if services.is_empty() {
        return Err(input_error(file, "no services: the file needs a 'services' mapping"));
    }
    if services.len() > 10 {
        return Err(input_error(
            file,
            "more than 10 services: one task definition holds at most 10 containers",
        ));
    }
    let mut containers = Vec::new();
    let mut replicas: BTreeMap<&str, u32> = BTreeMap::new();
    for (name, svc) in &services {
        let c = container(name, svc, &services, read_env_file, &mut warnings).map_err(|m| input_error(file, m))?;
        containers.push(c);
        let n = svc.deploy.as_ref().and_then(|d| d.replicas).unwrap_or(1);
        replicas.insert(name, n);
    }
    let max = replicas.values().copied().max().unwrap_or(1);
    if replicas.values().any(|r| *r != max) {
        let list: Vec<String> = replicas.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        warnings.push(format!(
            "deploy.replicas differ ({}); the project is one task definition, so a service runs {max} task(s) of all containers",
            list.join(", ")
        ));
    }
    Ok(Translation {
        task_definition: json!({"family": project, "containerDefinitions": containers}),
        project,
        replicas: max,
        warnings,
    })
}

/// One compose service as an ECS container definition; errors name the key
/// (`services.web.deploy.resources.limits.memory: ...`).
fn container(
    name: &str,
    svc: &Service,
    services: &BTreeMap<String, Service>,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Value, String> {
    let at = format!("services.{name}");
    let image = svc
        .image
        .clone()
        .ok_or_else(|| format!("{at}.image: is required (build: is not supported)"))?;
    let mut c = json!({"name": name, "image": image, "essential": true});
    if let Some(cmd) = &svc.command {
        c["command"] = json!(words(cmd, &format!("{at}.command"))?);
    }
    if let Some(ep) = &svc.entrypoint {
        c["entryPoint"] = json!(words(ep, &format!("{at}.entrypoint"))?);
    }
    let env = environment(svc, &at, read_env_file, warnings)?;
    if !env.is_empty() {
        c["environment"] = Value::Array(env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect());
    }
    if let Some(ports) = &svc.ports {
        let mut maps = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            maps.push(port_mapping(p, &format!("{at}.ports[{i}]"), warnings)?);
        }
        c["portMappings"] = Value::Array(maps);
    }
    let sizes = sizes(svc.deploy.as_ref(), &at)?;
    if let Some(m) = sizes.memory {
        c["memory"] = json!(m);
    }
    if let Some(r) = sizes.reservation {
        c["memoryReservation"] = json!(r);
    }
    if let Some(cpu) = sizes.cpu {
        c["cpu"] = json!(cpu);
    }
    if let Some(h) = &svc.healthcheck
        && let Some(hc) = health_check(h, &format!("{at}.healthcheck"))?
    {
        c["healthCheck"] = hc;
    }
    if let Some(deps) = &svc.depends_on {
        c["dependsOn"] = depends_on(deps, &at, services)?;
    }
    Ok(c)
}

/// `env_file`s first; `environment` wins over them, as in compose.
fn environment(
    svc: &Service,
    at: &str,
    read_env_file: &dyn Fn(&str) -> Result<String, String>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Some(files) = &svc.env_file {
        let files = match files {
            StrOrList::Str(s) => vec![s.clone()],
            StrOrList::List(l) => l.clone(),
        };
        for f in files {
            let text = read_env_file(&f).map_err(|e| format!("{at}.env_file: {f}: {e}"))?;
            for (k, v) in parse_env_file(&text).map_err(|e| format!("{at}.env_file: {f}: {e}"))? {
                env.insert(k, v);
            }
        }
    }
    match &svc.environment {
        Some(Environment::Map(m)) => {
            for (k, v) in m {
                env.insert(k.clone(), v.as_ref().map(scalar_string).unwrap_or_default());
            }
        }
        Some(Environment::List(l)) => {
            for item in l {
                match item.split_once('=') {
                    Some((k, v)) => env.insert(k.to_string(), v.to_string()),
                    None => {
                        warnings.push(format!(
                            "{at}.environment: {item} has no value (values are not taken from your shell); set to empty"
                        ));
                        env.insert(item.clone(), String::new())
                    }
                };
            }
        }
        None => {}
    }
    Ok(env)
}

/// A container's memory limit, reservation and CPU units.
#[derive(Debug, Default, PartialEq)]
struct Sizes {
    memory: Option<u32>,
    reservation: Option<u32>,
    cpu: Option<u32>,
}

/// `deploy.resources` as ECS sizes; a container with neither a memory limit
/// nor a reservation gets [`DEFAULT_MEMORY_MIB`].
fn sizes(deploy: Option<&Deploy>, at: &str) -> Result<Sizes, String> {
    let mut out = Sizes::default();
    if let Some(r) = deploy.and_then(|d| d.resources.as_ref()) {
        let res_at = format!("{at}.deploy.resources");
        if let Some(l) = &r.limits {
            if let Some(m) = &l.memory {
                out.memory = Some(parse_memory_mib(m).map_err(|e| format!("{res_at}.limits.memory: {e}"))?);
            }
            if let Some(c) = &l.cpus {
                out.cpu = Some(parse_cpus(c).map_err(|e| format!("{res_at}.limits.cpus: {e}"))?);
            }
        }
        if let Some(l) = &r.reservations {
            if let Some(m) = &l.memory {
                out.reservation = Some(parse_memory_mib(m).map_err(|e| format!("{res_at}.reservations.memory: {e}"))?);
            }
            // ECS `cpu` is what the scheduler reserves: the reservation
            // when there is one, else the limit.
            if let Some(c) = &l.cpus {
                out.cpu = Some(parse_cpus(c).map_err(|e| format!("{res_at}.reservations.cpus: {e}"))?);
            }
        }
    }
    if let (Some(m), Some(r)) = (out.memory, out.reservation)
        && r > m
    {
        return Err(format!(
            "{at}.deploy.resources: reservations.memory ({r} MiB) is greater than limits.memory ({m} MiB)"
        ));
    }
    if out.memory.is_none() && out.reservation.is_none() {
        out.memory = Some(DEFAULT_MEMORY_MIB);
    }
    Ok(out)
}

/// A compose `healthcheck` as an ECS `healthCheck`, its times clamped to
/// what ECS accepts; `None` when disabled or `NONE`.
fn health_check(h: &Healthcheck, hat: &str) -> Result<Option<Value>, String> {
    if h.disable.unwrap_or(false) {
        return Ok(None);
    }
    let command = match &h.test {
        Some(StrOrList::Str(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
        Some(StrOrList::List(l)) => match l.first().map(String::as_str) {
            Some("NONE") => return Ok(None),
            Some("CMD") | Some("CMD-SHELL") if l.len() > 1 => l.clone(),
            _ => return Err(format!("{hat}.test: must start with CMD or CMD-SHELL")),
        },
        None => return Err(format!("{hat}.test: is required")),
    };
    let secs = |v: &Option<String>, k: &str| -> Result<Option<u32>, String> {
        v.as_deref()
            .map(parse_duration_secs)
            .transpose()
            .map_err(|e| format!("{hat}.{k}: {e}"))
    };
    let mut hc = json!({"command": command});
    if let Some(s) = secs(&h.interval, "interval")? {
        hc["interval"] = json!(s.clamp(5, 300));
    }
    if let Some(s) = secs(&h.timeout, "timeout")? {
        hc["timeout"] = json!(s.clamp(2, 60));
    }
    if let Some(r) = h.retries {
        hc["retries"] = json!(r.clamp(1, 10));
    }
    if let Some(s) = secs(&h.start_period, "start_period")? {
        hc["startPeriod"] = json!(s.min(300));
    }
    Ok(Some(hc))
}

/// `depends_on` (list or long form) as ECS `dependsOn`; every name must be
/// a service of the same file.
fn depends_on(deps: &DependsOn, at: &str, services: &BTreeMap<String, Service>) -> Result<Value, String> {
    let list: Vec<(String, &str)> = match deps {
        DependsOn::List(l) => l.iter().map(|d| (d.clone(), "START")).collect(),
        DependsOn::Map(m) => {
            let mut out = Vec::new();
            for (d, long) in m {
                let cond = match long.condition.as_deref() {
                    None | Some("service_started") => "START",
                    Some("service_healthy") => "HEALTHY",
                    Some("service_completed_successfully") => "SUCCESS",
                    Some(other) => {
                        return Err(format!(
                            "{at}.depends_on.{d}.condition: '{other}' is not a compose condition"
                        ));
                    }
                };
                out.push((d.clone(), cond));
            }
            out
        }
    };
    for (d, _) in &list {
        if !services.contains_key(d) {
            return Err(format!("{at}.depends_on: no service named '{d}' in this file"));
        }
    }
    Ok(Value::Array(
        list.iter()
            .map(|(d, cond)| json!({"containerName": d, "condition": cond}))
            .collect(),
    ))
}

#[cfg(test)]
mod tests;
