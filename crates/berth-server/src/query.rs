//! A subset of the ECS cluster query language, enough for
//! `ListContainerInstances --filter` and `memberOf` placement constraints:
//! `SUBJECT == V`, `!=`, `in [A, B]`, `not_in [...]`, `exists`, `>`, `>=`,
//! `<`, `<=`, values with `*` wildcards, joined by `and` / `or` (`&&`, `||`;
//! `and` binds tighter). Subjects: `attribute:NAME`, `ec2InstanceId`,
//! `agentConnected`, `agentVersion`, `runningTasksCount`,
//! `pendingTasksCount`, `registeredAt` is not supported.

use berth_model::ContainerInstance;

/// A parsed expression: OR of AND groups of terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    any: Vec<Vec<Term>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Cmp(String, String, String),
    In(String, Vec<String>, bool),
    Exists(String),
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => flush(&mut cur, &mut out),
            '[' | ']' | ',' | '(' | ')' => {
                flush(&mut cur, &mut out);
                out.push(c.to_string());
            }
            '=' | '!' | '<' | '>' | '&' | '|' => {
                flush(&mut cur, &mut out);
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                if matches!(two.as_str(), "==" | "!=" | ">=" | "<=" | "&&" | "||" | "=~") {
                    out.push(two);
                    i += 1;
                } else {
                    out.push(c.to_string());
                }
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    flush(&mut cur, &mut out);
    out
}

impl Query {
    /// Parses `s`; the error says what was not understood.
    pub fn parse(s: &str) -> Result<Query, String> {
        let toks = tokenize(s);
        let mut i = 0;
        let mut any = vec![Vec::new()];
        let next = |i: &mut usize| -> Option<String> {
            let t = toks.get(*i).cloned();
            *i += 1;
            t
        };
        loop {
            let subject = next(&mut i).ok_or("expected a subject")?;
            if matches!(subject.as_str(), "(" | ")" | "!" | "not") {
                return Err(format!("'{subject}' is not supported in this query subset"));
            }
            let op = next(&mut i).ok_or_else(|| format!("expected an operator after '{subject}'"))?;
            let term = match op.as_str() {
                "exists" => Term::Exists(subject),
                "in" | "not_in" => {
                    if next(&mut i).as_deref() != Some("[") {
                        return Err(format!("expected '[' after '{op}'"));
                    }
                    let mut vals = Vec::new();
                    loop {
                        match next(&mut i) {
                            Some(t) if t == "]" => break,
                            Some(t) if t == "," => continue,
                            Some(t) => vals.push(t),
                            None => return Err("unterminated '['".into()),
                        }
                    }
                    Term::In(subject, vals, op == "not_in")
                }
                "==" | "!=" | ">" | ">=" | "<" | "<=" => {
                    let v = next(&mut i).ok_or_else(|| format!("expected a value after '{op}'"))?;
                    Term::Cmp(subject, op, v)
                }
                other => return Err(format!("'{other}' is not a supported operator")),
            };
            if let Some(last) = any.last_mut() {
                last.push(term);
            }
            match next(&mut i).as_deref() {
                None => break,
                Some("and" | "&&") => {}
                Some("or" | "||") => any.push(Vec::new()),
                Some(t) => return Err(format!("expected 'and' or 'or', found '{t}'")),
            }
        }
        Ok(Query { any })
    }

    /// Whether `instance` satisfies the query.
    pub fn matches(&self, instance: &ContainerInstance) -> bool {
        self.any.iter().any(|all| all.iter().all(|t| term_matches(t, instance)))
    }
}

fn subject_value(subject: &str, ci: &ContainerInstance) -> Option<String> {
    if let Some(name) = subject.strip_prefix("attribute:") {
        return ci.attributes.get(name).cloned();
    }
    match subject {
        "ec2InstanceId" => Some(ci.ec2_instance_id.clone()),
        "agentConnected" => Some(ci.agent_connected.to_string()),
        "agentVersion" => Some(ci.version_info.agent_version.clone()),
        "runningTasksCount" => Some(ci.running_tasks_count.to_string()),
        "pendingTasksCount" => Some(ci.pending_tasks_count.to_string()),
        _ => None,
    }
}

fn wildcard(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, rest)) => value.strip_prefix(head).is_some_and(|v| {
            (0..=v.len())
                .filter(|j| v.is_char_boundary(*j))
                .any(|j| wildcard(rest, &v[j..]))
        }),
    }
}

fn term_matches(t: &Term, ci: &ContainerInstance) -> bool {
    match t {
        Term::Exists(s) => subject_value(s, ci).is_some(),
        Term::In(s, vals, negate) => {
            let hit = subject_value(s, ci).is_some_and(|v| vals.iter().any(|p| wildcard(p, &v)));
            hit != *negate
        }
        Term::Cmp(s, op, want) => {
            let Some(v) = subject_value(s, ci) else {
                return op == "!=";
            };
            match op.as_str() {
                "==" => wildcard(want, &v),
                "!=" => !wildcard(want, &v),
                _ => match (v.parse::<f64>(), want.parse::<f64>()) {
                    (Ok(a), Ok(b)) => match op.as_str() {
                        ">" => a > b,
                        ">=" => a >= b,
                        "<" => a < b,
                        _ => a <= b,
                    },
                    _ => false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{InstanceStatus, Resources, VersionInfo};

    fn ci() -> ContainerInstance {
        ContainerInstance {
            id: "i1".into(),
            cluster: "c".into(),
            ec2_instance_id: "i-0abc".into(),
            status: InstanceStatus::Active,
            agent_connected: true,
            registered: Resources::new(1024, 1024),
            remaining: Resources::new(1024, 1024),
            port_range: (32768, 61000),
            attributes: [
                ("ecs.instance-type".to_string(), "t2.micro".to_string()),
                ("ecs.availability-zone".to_string(), "us-east-1a".to_string()),
            ]
            .into(),
            version_info: VersionInfo::default(),
            running_tasks_count: 3,
            pending_tasks_count: 0,
            registered_at: 0.0,
            tags: vec![],
        }
    }

    #[test]
    fn evaluates_the_subset() {
        let c = ci();
        let t = |q: &str| Query::parse(q).unwrap().matches(&c);
        assert!(t("attribute:ecs.instance-type == t2.micro"));
        assert!(t("attribute:ecs.instance-type == t2.*"));
        assert!(!t("attribute:ecs.instance-type != t2.micro"));
        assert!(t("attribute:ecs.availability-zone in [us-east-1a, us-east-1b]"));
        assert!(t("attribute:ecs.availability-zone not_in [us-east-1b]"));
        assert!(t("attribute:ecs.instance-type exists and runningTasksCount > 2"));
        assert!(t("attribute:missing exists or ec2InstanceId == i-0abc"));
        assert!(!t("attribute:missing exists || agentConnected == false"));
        assert!(Query::parse("attribute:x ~~ y").is_err());
        assert!(Query::parse("(a == b)").is_err());
    }
}
