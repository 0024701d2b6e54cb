//! The ECS cluster query language, parsed into a syntax tree.
//!
//! ```text
//! expr    := and (("or" | "||") and)*
//! and     := unary (("and" | "&&") unary)*
//! unary   := ("not" | "!") unary | "(" expr ")" | subject predicate
//! subject := attribute:NAME | task:group | instanceId | ec2InstanceId
//!          | agentConnected | agentVersion | runningTasksCount | pendingTasksCount
//! predicate := (== | != | =~ | !~ | > | >= | < | <=) VALUE
//!            | (in | not_in | "!" in) "[" VALUE ("," VALUE)* "]"
//!            | exists | not_exists | "!" exists
//! ```
//! Values may hold `*` wildcards for `=~` / `!~`.
//!
//! This is the one parser of the language: `memberOf` constraints (compiled
//! against a snapshot by `constraint`) and `ListContainerInstances`
//! filters (evaluated on one record at a time by [`Ast::eval`]) both use it.

use crate::SchedError;

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `attribute:NAME`: an instance attribute.
    Attribute(String),
    /// `task:group`: the groups of tasks running on the instance.
    TaskGroup,
    /// `instanceId`: the container instance's id.
    InstanceId,
    /// `ec2InstanceId`: the host's id (the engine knows hosts by one id, so
    /// there it is the same as `instanceId`).
    Ec2InstanceId,
    /// `agentConnected`: `true` or `false`.
    AgentConnected,
    /// `runningTasksCount`: tasks on the instance.
    RunningTasksCount,
    /// `agentVersion`: a record-only subject (list filters); the engine
    /// does not see agent versions.
    AgentVersion,
    /// `pendingTasksCount`: a record-only subject (list filters).
    PendingTasksCount,
}

impl Subject {
    /// Whether only records know it (the placement engine does not): such
    /// subjects belong in list filters, not in `memberOf` constraints.
    pub fn record_only(&self) -> bool {
        matches!(self, Subject::AgentVersion | Subject::PendingTasksCount)
    }
}

/// A predicate on a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    Ne(String),
    Matches(String),
    NotMatches(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(String),
    Ge(String),
    Lt(String),
    Le(String),
}

/// A parsed `memberOf` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ast {
    Cmp(Subject, Op),
    And(Box<Ast>, Box<Ast>),
    Or(Box<Ast>, Box<Ast>),
    Not(Box<Ast>),
}

impl Ast {
    /// Whether the expression reads only instance attributes and ids, so it
    /// can be evaluated once per instance instead of once per placement.
    pub fn is_static(&self) -> bool {
        match self {
            Ast::Cmp(s, _) => !matches!(s, Subject::TaskGroup | Subject::RunningTasksCount),
            Ast::And(a, b) | Ast::Or(a, b) => a.is_static() && b.is_static(),
            Ast::Not(a) => a.is_static(),
        }
    }
}

impl Ast {
    /// Every subject the expression reads, in order.
    pub fn subjects(&self) -> Vec<&Subject> {
        match self {
            Ast::Cmp(s, _) => vec![s],
            Ast::And(a, b) | Ast::Or(a, b) => {
                let mut v = a.subjects();
                v.extend(b.subjects());
                v
            }
            Ast::Not(a) => a.subjects(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    Sym(&'a str),
    Word(&'a str),
    End,
}

const SYMBOLS: [&str; 11] = ["==", "!=", "=~", "!~", ">=", "<=", "&&", "||", ">", "<", "!"];

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !"()[],=!<>~&|".contains(c)
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    peeked: Option<(usize, Tok<'a>)>,
}

impl<'a> Lexer<'a> {
    fn lex(&mut self) -> Result<(usize, Tok<'a>), SchedError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        let start = self.pos + (rest.len() - trimmed.len());
        let Some(c) = trimmed.chars().next() else {
            self.pos = start;
            return Ok((start, Tok::End));
        };
        let single = match c {
            '(' => Some(Tok::Open),
            ')' => Some(Tok::Close),
            '[' => Some(Tok::OpenList),
            ']' => Some(Tok::CloseList),
            ',' => Some(Tok::Comma),
            _ => None,
        };
        if let Some(t) = single {
            self.pos = start + 1;
            return Ok((start, t));
        }
        if let Some(sym) = SYMBOLS.iter().find(|s| trimmed.starts_with(**s)) {
            self.pos = start + sym.len();
            return Ok((start, Tok::Sym(sym)));
        }
        let len = trimmed.find(|c: char| !is_word_char(c)).unwrap_or(trimmed.len());
        if len == 0 {
            return Err(SchedError::Parse {
                position: start,
                expected: "a word, an operator or a parenthesis",
                found: format!("'{c}'"),
            });
        }
        self.pos = start + len;
        Ok((start, Tok::Word(&trimmed[..len])))
    }

    fn peek(&mut self) -> Result<(usize, Tok<'a>), SchedError> {
        if let Some(t) = &self.peeked {
            return Ok(t.clone());
        }
        let t = self.lex()?;
        self.peeked = Some(t.clone());
        Ok(t)
    }

    fn next(&mut self) -> Result<(usize, Tok<'a>), SchedError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }
}

fn describe(t: &Tok<'_>) -> String {
    match t {
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
        Tok::OpenList => "'['".into(),
        Tok::CloseList => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Word(w) => format!("'{w}'"),
        Tok::End => "end of expression".into(),
    }
}

fn err(pos: usize, expected: &'static str, t: &Tok<'_>) -> SchedError {
    SchedError::Parse {
        position: pos,
        expected,
        found: describe(t),
    }
}

fn keyword(t: &Tok<'_>, k: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(k))
}

/// Parses a `memberOf` expression.
pub fn parse(src: &str) -> Result<Ast, SchedError> {
    let mut lx = Lexer {
        src,
        pos: 0,
        peeked: None,
    };
    let ast = parse_or(&mut lx)?;
    match lx.next()? {
        (_, Tok::End) => Ok(ast),
        (p, t) => Err(err(p, "'and', 'or' or end of expression", &t)),
    }
}

fn parse_or<'a>(lx: &mut Lexer<'a>) -> Result<Ast, SchedError> {
    let mut left = parse_and(lx)?;
    loop {
        let (_, t) = lx.peek()?;
        if keyword(&t, "or") || t == Tok::Sym("||") {
            lx.next()?;
            left = Ast::Or(Box::new(left), Box::new(parse_and(lx)?));
        } else {
            return Ok(left);
        }
    }
}

fn parse_and<'a>(lx: &mut Lexer<'a>) -> Result<Ast, SchedError> {
    let mut left = parse_unary(lx)?;
    loop {
        let (_, t) = lx.peek()?;
        if keyword(&t, "and") || t == Tok::Sym("&&") {
            lx.next()?;
            left = Ast::And(Box::new(left), Box::new(parse_unary(lx)?));
        } else {
            return Ok(left);
        }
    }
}

fn parse_unary<'a>(lx: &mut Lexer<'a>) -> Result<Ast, SchedError> {
    let (pos, t) = lx.next()?;
    if keyword(&t, "not") || t == Tok::Sym("!") {
        return Ok(Ast::Not(Box::new(parse_unary(lx)?)));
    }
    match t {
        Tok::Open => {
            let inner = parse_or(lx)?;
            match lx.next()? {
                (_, Tok::Close) => Ok(inner),
                (p, t) => Err(err(p, "')'", &t)),
            }
        }
        Tok::Word(w) => {
            let subject = parse_subject(pos, w)?;
            let op = parse_predicate(lx)?;
            Ok(Ast::Cmp(subject, op))
        }
        t => Err(err(pos, SUBJECT, &t)),
    }
}

const SUBJECT: &str = "'attribute:NAME', 'task:group', 'instanceId', 'ec2InstanceId', 'agentConnected', \
'agentVersion', 'runningTasksCount', 'pendingTasksCount', 'not' or '('";

fn parse_subject(pos: usize, w: &str) -> Result<Subject, SchedError> {
    if let Some(name) = w.strip_prefix("attribute:") {
        if name.is_empty() {
            return Err(SchedError::Parse {
                position: pos + w.len(),
                expected: "an attribute name after 'attribute:'",
                found: "nothing".into(),
            });
        }
        return Ok(Subject::Attribute(name.to_string()));
    }
    match w {
        "task:group" => Ok(Subject::TaskGroup),
        "instanceId" => Ok(Subject::InstanceId),
        "ec2InstanceId" => Ok(Subject::Ec2InstanceId),
        "agentConnected" => Ok(Subject::AgentConnected),
        "agentVersion" => Ok(Subject::AgentVersion),
        "runningTasksCount" => Ok(Subject::RunningTasksCount),
        "pendingTasksCount" => Ok(Subject::PendingTasksCount),
        _ => Err(err(pos, SUBJECT, &Tok::Word(w))),
    }
}

fn value<'a>(lx: &mut Lexer<'a>) -> Result<String, SchedError> {
    match lx.next()? {
        (_, Tok::Word(w)) => Ok(w.to_string()),
        (p, t) => Err(err(p, "a value", &t)),
    }
}

fn list<'a>(lx: &mut Lexer<'a>) -> Result<Vec<String>, SchedError> {
    match lx.next()? {
        (_, Tok::OpenList) => {}
        (p, t) => Err(err(p, "'[' opening a value list", &t))?,
    }
    let mut out = vec![value(lx)?];
    loop {
        match lx.next()? {
            (_, Tok::Comma) => out.push(value(lx)?),
            (_, Tok::CloseList) => return Ok(out),
            (p, t) => return Err(err(p, "',' or ']'", &t)),
        }
    }
}

const PREDICATE: &str = "an operator (==, !=, =~, !~, >, >=, <, <=, in, not_in, exists, not_exists)";

fn parse_predicate<'a>(lx: &mut Lexer<'a>) -> Result<Op, SchedError> {
    let (pos, t) = lx.next()?;
    Ok(match t {
        Tok::Sym("==") => Op::Eq(value(lx)?),
        Tok::Sym("!=") => Op::Ne(value(lx)?),
        Tok::Sym("=~") => Op::Matches(value(lx)?),
        Tok::Sym("!~") => Op::NotMatches(value(lx)?),
        Tok::Sym(">") => Op::Gt(value(lx)?),
        Tok::Sym(">=") => Op::Ge(value(lx)?),
        Tok::Sym("<") => Op::Lt(value(lx)?),
        Tok::Sym("<=") => Op::Le(value(lx)?),
        Tok::Sym("!") => match lx.next()? {
            (_, w) if keyword(&w, "in") => Op::NotIn(list(lx)?),
            (_, w) if keyword(&w, "exists") => Op::NotExists,
            (p, t) => return Err(err(p, "'in' or 'exists' after '!'", &t)),
        },
        Tok::Word(w) => match w.to_ascii_lowercase().as_str() {
            "equals" => Op::Eq(value(lx)?),
            "not_equals" => Op::Ne(value(lx)?),
            "matches" => Op::Matches(value(lx)?),
            "not_matches" => Op::NotMatches(value(lx)?),
            "in" => Op::In(list(lx)?),
            "not_in" => Op::NotIn(list(lx)?),
            "exists" => Op::Exists,
            "not_exists" => Op::NotExists,
            _ => return Err(err(pos, PREDICATE, &t)),
        },
        t => return Err(err(pos, PREDICATE, &t)),
    })
}

/// `*`-wildcard match (ECS `=~`): `t2.*` matches `t2.micro`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        return rest.is_empty();
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, op: Op) -> Ast {
        Ast::Cmp(Subject::Attribute(name.into()), op)
    }

    #[test]
    fn parses_the_ecs_examples() {
        assert_eq!(
            parse("attribute:ecs.instance-type =~ t2.*").unwrap(),
            attr("ecs.instance-type", Op::Matches("t2.*".into()))
        );
        assert_eq!(
            parse("attribute:ecs.availability-zone in [us-east-1a, us-east-1b]").unwrap(),
            attr(
                "ecs.availability-zone",
                Op::In(vec!["us-east-1a".into(), "us-east-1b".into()])
            )
        );
        assert_eq!(
            parse("not(task:group == databases)").unwrap(),
            Ast::Not(Box::new(Ast::Cmp(Subject::TaskGroup, Op::Eq("databases".into()))))
        );
        let e = parse("attribute:a exists and (attribute:b != x or attribute:c !exists)").unwrap();
        assert_eq!(
            e,
            Ast::And(
                Box::new(attr("a", Op::Exists)),
                Box::new(Ast::Or(
                    Box::new(attr("b", Op::Ne("x".into()))),
                    Box::new(attr("c", Op::NotExists))
                ))
            )
        );
        assert!(e.is_static());
        assert!(!parse("task:group == x or attribute:a exists").unwrap().is_static());
    }

    #[test]
    fn parses_the_list_filter_subjects() {
        let e = parse("agentConnected == true and runningTasksCount > 2 or ec2InstanceId == i-1").unwrap();
        let subjects: Vec<&Subject> = e.subjects();
        assert_eq!(
            subjects,
            [
                &Subject::AgentConnected,
                &Subject::RunningTasksCount,
                &Subject::Ec2InstanceId
            ]
        );
        assert!(!e.is_static(), "the running count changes as tasks are placed");
        let e = parse("agentVersion exists and pendingTasksCount == 0").unwrap();
        assert!(e.subjects().iter().all(|s| s.record_only()));
        assert!(!Subject::InstanceId.record_only());
        let e = parse("registeredAt > 5").unwrap_err();
        assert!(e.to_string().contains("'agentConnected'"), "{e}");
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let e = parse("attribute:a == 1 or attribute:b == 2 and attribute:c == 3").unwrap();
        assert!(matches!(e, Ast::Or(_, ref r) if matches!(**r, Ast::And(_, _))));
    }

    #[test]
    fn errors_name_position_and_expectation() {
        let e = parse("attribute:zone in [a, b").unwrap_err();
        assert_eq!(
            e,
            SchedError::Parse {
                position: 23,
                expected: "',' or ']'",
                found: "end of expression".into()
            }
        );
        let e = parse("attribute:zone ~= a").unwrap_err();
        assert!(matches!(e, SchedError::Parse { position: 15, .. }), "{e}");
        let e = parse("zone == a").unwrap_err();
        assert!(matches!(e, SchedError::Parse { position: 0, .. }), "{e}");
        let e = parse("(attribute:a exists").unwrap_err();
        assert!(
            matches!(
                e,
                SchedError::Parse {
                    position: 19,
                    expected: "')'",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("attribute:a exists attribute:b exists").unwrap_err();
        assert!(matches!(e, SchedError::Parse { position: 19, .. }), "{e}");
        assert!(
            e.to_string().contains("expected 'and', 'or' or end of expression"),
            "{e}"
        );
    }

    #[test]
    fn glob_matches_wildcards() {
        assert!(glob("t2.*", "t2.micro"));
        assert!(!glob("t2.*", "t3.micro"));
        assert!(glob("*large", "m4.xlarge"));
        assert!(glob("m*.*large", "m4.2xlarge"));
        assert!(!glob("m*.*large", "m4.2xlargeX"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
    }
}
