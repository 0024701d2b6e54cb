//! `memberOf` expressions compiled against a snapshot: attribute names and
//! values become integer ids and wildcard patterns become per-value tables,
//! so evaluating an expression on an instance does no string work.

use crate::expr::{Ast, Op, Subject, glob};
use crate::state::{Host, Interner, NONE, Snapshot};

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// Attribute `attr` of the host: `by_value[value id]`, or `absent` when
    /// the host lacks it.
    Attr {
        attr: u32,
        by_value: Vec<bool>,
        absent: bool,
    },
    /// Attribute unknown to every instance.
    Const(bool),
    /// The host's index: `by_host[h]`.
    Host(Vec<bool>),
    /// The number of tasks on the host (it changes as the batch places).
    Tasks(Op),
    /// Some task on the host has a group with `by_group[g]`, xor `negate`.
    Group {
        by_group: Vec<bool>,
        negate: bool,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

fn compare(op: &Op, have: &str) -> bool {
    fn ord(have: &str, want: &str) -> std::cmp::Ordering {
        match (have.parse::<f64>(), want.parse::<f64>()) {
            (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
            _ => have.cmp(want),
        }
    }
    match op {
        Op::Eq(v) => have == v,
        Op::Ne(v) => have != v,
        Op::Matches(p) => glob(p, have),
        Op::NotMatches(p) => !glob(p, have),
        Op::In(vs) => vs.iter().any(|v| v == have),
        Op::NotIn(vs) => !vs.iter().any(|v| v == have),
        Op::Exists => true,
        Op::NotExists => false,
        Op::Gt(v) => ord(have, v).is_gt(),
        Op::Ge(v) => ord(have, v).is_ge(),
        Op::Lt(v) => ord(have, v).is_lt(),
        Op::Le(v) => ord(have, v).is_le(),
    }
}

/// What the operator says about a subject that has no value.
fn on_absent(op: &Op) -> bool {
    matches!(op, Op::Ne(_) | Op::NotMatches(_) | Op::NotIn(_) | Op::NotExists)
}

/// The positive form of a negative operator (for `task:group`, where `!=`
/// means "no task of that group here").
fn positive(op: &Op) -> (Op, bool) {
    match op {
        Op::Ne(v) => (Op::Eq(v.clone()), true),
        Op::NotMatches(p) => (Op::Matches(p.clone()), true),
        Op::NotIn(vs) => (Op::In(vs.clone()), true),
        Op::NotExists => (Op::Exists, true),
        other => (other.clone(), false),
    }
}

fn table(names: &Interner, op: &Op) -> Vec<bool> {
    names.names.iter().map(|v| compare(op, v)).collect()
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

impl Ast {
    /// Evaluates the expression on one instance, one record at a time (list
    /// filters, "could this ever fit" checks): `value` gives a subject's
    /// value on it (`None` when it has none) and `groups` the task groups
    /// running on it. The engine compiles expressions against a whole
    /// snapshot instead; both share the operators' meaning.
    pub fn eval(&self, value: &dyn Fn(&Subject) -> Option<String>, groups: &[&str]) -> bool {
        match self {
            Ast::And(a, b) => a.eval(value, groups) && b.eval(value, groups),
            Ast::Or(a, b) => a.eval(value, groups) || b.eval(value, groups),
            Ast::Not(a) => !a.eval(value, groups),
            Ast::Cmp(Subject::TaskGroup, op) => {
                let (op, negate) = positive(op);
                groups.iter().any(|g| compare(&op, g)) != negate
            }
            Ast::Cmp(subject, op) => match value(subject) {
                Some(v) => compare(op, &v),
                None => on_absent(op),
            },
        }
    }
}

impl Expr {
    /// Compiles against `s`; every group the batch uses must be interned first.
    pub fn compile(ast: &Ast, s: &Snapshot) -> Expr {
        match ast {
            Ast::And(a, b) => Expr::And(Box::new(Expr::compile(a, s)), Box::new(Expr::compile(b, s))),
            Ast::Or(a, b) => Expr::Or(Box::new(Expr::compile(a, s)), Box::new(Expr::compile(b, s))),
            Ast::Not(a) => Expr::Not(Box::new(Expr::compile(a, s))),
            Ast::Cmp(Subject::Attribute(name), op) => match s.attr_names.get(name) {
                Some(attr) => Expr::Attr {
                    attr,
                    by_value: table(&s.attr_values[attr as usize], op),
                    absent: on_absent(op),
                },
                None => Expr::Const(on_absent(op)),
            },
            Ast::Cmp(Subject::InstanceId | Subject::Ec2InstanceId, op) => {
                Expr::Host(s.hosts.iter().map(|h| compare(op, &h.id)).collect())
            }
            Ast::Cmp(Subject::AgentConnected, op) => {
                Expr::Host(s.hosts.iter().map(|h| compare(op, bool_text(h.agent))).collect())
            }
            Ast::Cmp(Subject::RunningTasksCount, op) => Expr::Tasks(op.clone()),
            // The engine has no agent versions or pending counts: absent.
            Ast::Cmp(Subject::AgentVersion | Subject::PendingTasksCount, op) => Expr::Const(on_absent(op)),
            Ast::Cmp(Subject::TaskGroup, op) => {
                let (op, negate) = positive(op);
                Expr::Group {
                    by_group: table(&s.groups, &op),
                    negate,
                }
            }
        }
    }

    pub fn eval(&self, h: usize, host: &Host) -> bool {
        match self {
            Expr::Attr { attr, by_value, absent } => match host.attrs.get(*attr as usize).copied().unwrap_or(NONE) {
                NONE => *absent,
                v => by_value.get(v as usize).copied().unwrap_or(false),
            },
            Expr::Const(b) => *b,
            Expr::Host(by_host) => by_host.get(h).copied().unwrap_or(false),
            Expr::Tasks(op) => compare(op, &host.tasks.to_string()),
            Expr::Group { by_group, negate } => {
                let any = host
                    .groups
                    .iter()
                    .any(|(g, n)| *n > 0 && by_group.get(*g as usize).copied().unwrap_or(false));
                any != *negate
            }
            Expr::And(a, b) => a.eval(h, host) && b.eval(h, host),
            Expr::Or(a, b) => a.eval(h, host) || b.eval(h, host),
            Expr::Not(a) => !a.eval(h, host),
        }
    }
}
