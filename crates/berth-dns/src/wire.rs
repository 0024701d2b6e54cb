//! The DNS side: answering one query from the table (a pure function), the
//! UDP and TCP listeners on one address, and a small client for tests and
//! tools.
//!
//! Names, for service `S` in cluster (namespace) `N`, each also with the
//! configured domain suffix `D` appended:
//! - `S.N` — `A`/`AAAA`: the host IP of every serving task (deduplicated);
//!   `SRV`: one record per serving task (priority 0, weight 1, its host
//!   port, target `TASKID.S.N`).
//! - `_S._tcp.N` — `SRV`, as above.
//! - `TASKID.S.N` — `A`/`AAAA` of that task.
//!
//! Every record has a TTL of 1 s. SRV answers carry the targets' addresses
//! in the additional section. A name that does not exist is NXDOMAIN; a name
//! that exists without records of the asked type is an empty NOERROR.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::DnsError;
use crate::follow::Discovery;
use crate::table::{Endpoint, Table};

/// The TTL of every record.
pub const TTL: u32 = 1;

/// Largest UDP answer we send when the client did not advertise EDNS.
const UDP_PLAIN: usize = 512;
/// Largest UDP answer we send at all (the usual EDNS safe size).
const UDP_MAX: u16 = 1232;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP listen on this address (port 0: one free port for both).
    pub listen: SocketAddr,
    /// An optional suffix also accepted after the namespace (`berth` makes
    /// `web.default.berth.` answer like `web.default.`).
    pub domain: Option<String>,
}

/// The parsed question name.
enum Target<'a> {
    /// `S.N`
    Service { ns: &'a str, svc: &'a str },
    /// `_S._tcp.N`
    SrvOnly { ns: &'a str, svc: &'a str },
    /// `TASKID.S.N`
    Task { ns: &'a str, svc: &'a str, task: &'a str },
}

fn labels_of(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

fn name_of(labels: &[&str]) -> Option<Name> {
    let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
    n.set_fqdn(true);
    Some(n)
}

fn parse<'a>(labels: &'a [String], domain: &[String]) -> Option<(Target<'a>, bool)> {
    let (labels, suffixed) = if !domain.is_empty() && labels.len() > domain.len() && labels.ends_with(domain) {
        (&labels[..labels.len() - domain.len()], true)
    } else {
        (labels, false)
    };
    let t = match labels {
        [svc, proto, ns] if proto == "_tcp" && svc.starts_with('_') => Target::SrvOnly { ns, svc: &svc[1..] },
        [svc, ns] => Target::Service { ns, svc },
        [task, svc, ns] => Target::Task { ns, svc, task },
        _ => return None,
    };
    Some((t, suffixed))
}

fn addr_record(name: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), TTL, data)
}

fn wants_addr(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// The answer to `request` from `table`; `domain` is the configured suffix.
pub fn answer(table: &Table, domain: Option<&str>, request: &Message) -> Message {
    let mut resp = Message::response(request.metadata.id, request.metadata.op_code);
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    resp.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(UDP_MAX);
        resp.set_edns(e);
    }
    if request.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp;
    }
    let [q] = request.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    let domain: Vec<String> = domain
        .map(|d| {
            d.trim_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let labels = labels_of(q.name());
    let Some((target, suffixed)) = parse(&labels, &domain) else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        return resp;
    };
    let (ns, svc) = match &target {
        Target::Service { ns, svc } | Target::SrvOnly { ns, svc } | Target::Task { ns, svc, .. } => (*ns, *svc),
    };
    let Some(endpoints) = table.get(ns, svc) else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        return resp;
    };
    let qtype = q.query_type();
    let qname = q.name().clone();
    let task_name = |e: &Endpoint| -> Option<Name> {
        let id = e.task_id.to_ascii_lowercase();
        let mut parts = vec![id.as_str(), svc, ns];
        if suffixed {
            parts.extend(domain.iter().map(String::as_str));
        }
        name_of(&parts)
    };
    let srv = |resp: &mut Message| {
        for e in &endpoints.tasks {
            let (Some(port), Some(target)) = (e.port, task_name(e)) else {
                continue;
            };
            resp.add_answer(Record::from_rdata(
                qname.clone(),
                TTL,
                RData::SRV(SRV::new(0, 1, port, target.clone())),
            ));
            resp.add_additional(addr_record(&target, e.ip));
        }
    };
    match target {
        Target::Service { .. } => {
            let mut seen = Vec::new();
            for e in &endpoints.tasks {
                if wants_addr(qtype, e.ip) && !seen.contains(&e.ip) {
                    seen.push(e.ip);
                    resp.add_answer(addr_record(&qname, e.ip));
                }
            }
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                srv(&mut resp);
            }
        }
        Target::SrvOnly { .. } => {
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                srv(&mut resp);
            }
        }
        Target::Task { task, .. } => {
            let Some(e) = endpoints.tasks.iter().find(|e| e.task_id.eq_ignore_ascii_case(task)) else {
                resp.metadata.response_code = ResponseCode::NXDomain;
                return resp;
            };
            if wants_addr(qtype, e.ip) {
                resp.add_answer(addr_record(&qname, e.ip));
            }
        }
    }
    resp
}

/// Encodes `resp` for UDP within the client's limit: additional records go
/// first, then the answers (with the TC bit, so the client retries on TCP).
fn encode_udp(mut resp: Message, request: &Message) -> Result<Vec<u8>, DnsError> {
    let limit = request
        .edns
        .as_ref()
        .map_or(UDP_PLAIN, |e| usize::from(e.max_payload().clamp(512, UDP_MAX)));
    let bytes = resp.to_vec().map_err(|e| DnsError::Proto(e.to_string()))?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    resp.additionals.clear();
    let bytes = resp.to_vec().map_err(|e| DnsError::Proto(e.to_string()))?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    resp.answers.clear();
    resp.metadata.truncation = true;
    resp.to_vec().map_err(|e| DnsError::Proto(e.to_string()))
}

fn respond(discovery: &Discovery, domain: Option<&str>, packet: &[u8]) -> Option<(Message, Message)> {
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable DNS query ignored");
            return None;
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let resp = answer(&discovery.table(), domain, &request);
    Some((request, resp))
}

/// The running DNS listeners; dropping this does not stop them, [`DnsServer::stop`] does.
#[derive(Debug)]
pub struct DnsServer {
    /// The bound address (UDP and TCP share the port).
    pub local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen` and answers from `discovery`.
    pub async fn start(discovery: Discovery, cfg: DnsConfig) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let local_addr = udp.local_addr().map_err(|e| DnsError::Io(e.to_string()))?;
        let domain: Option<Arc<str>> = cfg.domain.as_deref().map(Arc::from);
        let udp = Arc::new(udp);
        let mut tasks = Vec::new();
        {
            let discovery = discovery.clone();
            let domain = domain.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, peer) = match udp.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "DNS UDP receive failed");
                            continue;
                        }
                    };
                    let Some((request, resp)) = respond(&discovery, domain.as_deref(), &buf[..n]) else {
                        continue;
                    };
                    match encode_udp(resp, &request) {
                        Ok(bytes) => {
                            if let Err(e) = udp.send_to(&bytes, peer).await {
                                tracing::debug!(error = %e, %peer, "DNS UDP send failed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "DNS answer not encodable"),
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(async move {
            loop {
                let (conn, _) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let discovery = discovery.clone();
                let domain = domain.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_tcp(conn, &discovery, domain.as_deref()).await {
                        tracing::debug!(error = %e, "DNS TCP connection ended");
                    }
                });
            }
        }));
        Ok(DnsServer { local_addr, tasks })
    }

    /// Stops both listeners.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// UDP and TCP on one port; with port 0, retries until a port free for both is found.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut last = String::new();
    for _ in 0..if addr.port() == 0 { 20 } else { 1 } {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| DnsError::Io(format!("binding UDP {addr}: {e}")))?;
        let bound = udp.local_addr().map_err(|e| DnsError::Io(e.to_string()))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = format!("binding TCP {bound}: {e}"),
        }
    }
    Err(DnsError::Io(last))
}

async fn serve_tcp(mut conn: TcpStream, discovery: &Discovery, domain: Option<&str>) -> std::io::Result<()> {
    loop {
        let len = match conn.read_u16().await {
            Ok(n) => usize::from(n),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await?;
        let Some((_, resp)) = respond(discovery, domain, &buf) else {
            return Ok(());
        };
        let bytes = resp
            .to_vec()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let Ok(n) = u16::try_from(bytes.len()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer over 64 KiB",
            ));
        };
        conn.write_u16(n).await?;
        conn.write_all(&bytes).await?;
    }
}

/// Which transport [`query`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One resolved record, simplified for callers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    Addr(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// The outcome of one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: ResponseCode,
    pub truncated: bool,
    pub answers: Vec<Answer>,
    /// Addresses in the additional section, by owner name.
    pub additional: Vec<(String, IpAddr)>,
    pub ttls: Vec<u32>,
}

/// Asks the server at `server` one question (a small stub resolver).
pub async fn query(server: SocketAddr, name: &str, qtype: RecordType, transport: Transport) -> Result<Reply, DnsError> {
    let qname = Name::from_ascii(name).map_err(|e| DnsError::Proto(format!("name {name:?}: {e}")))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = false;
    msg.add_query(Query::query(qname, qtype));
    let bytes = msg.to_vec().map_err(|e| DnsError::Proto(e.to_string()))?;
    let io = |e: std::io::Error| DnsError::Io(format!("{server}: {e}"));
    let raw = match transport {
        Transport::Udp => {
            let bind: SocketAddr = if server.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(bind).await.map_err(io)?;
            sock.connect(server).await.map_err(io)?;
            sock.send(&bytes).await.map_err(io)?;
            let mut buf = vec![0u8; 65535];
            let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
                .await
                .map_err(|_| DnsError::Io(format!("{server}: no UDP answer within 2 s")))?
                .map_err(io)?;
            buf.truncate(n);
            buf
        }
        Transport::Tcp => {
            let mut conn = TcpStream::connect(server).await.map_err(io)?;
            let len = u16::try_from(bytes.len()).map_err(|_| DnsError::Proto("query too long".into()))?;
            conn.write_u16(len).await.map_err(io)?;
            conn.write_all(&bytes).await.map_err(io)?;
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read_u16())
                .await
                .map_err(|_| DnsError::Io(format!("{server}: no TCP answer within 2 s")))?
                .map_err(io)?;
            let mut buf = vec![0u8; usize::from(n)];
            conn.read_exact(&mut buf).await.map_err(io)?;
            buf
        }
    };
    let resp = Message::from_vec(&raw).map_err(|e| DnsError::Proto(e.to_string()))?;
    if resp.metadata.id != msg.metadata.id {
        return Err(DnsError::Proto("answer id does not match the query".into()));
    }
    let mut answers = Vec::new();
    let mut ttls = Vec::new();
    for r in &resp.answers {
        ttls.push(r.ttl);
        match &r.data {
            RData::A(a) => answers.push(Answer::Addr(IpAddr::V4(a.0))),
            RData::AAAA(a) => answers.push(Answer::Addr(IpAddr::V6(a.0))),
            RData::SRV(s) => answers.push(Answer::Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: s.target.to_ascii(),
            }),
            _ => {}
        }
    }
    let additional = resp
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((r.name.to_ascii(), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    Ok(Reply {
        code: resp.metadata.response_code,
        truncated: resp.metadata.truncation,
        answers,
        additional,
        ttls,
    })
}
