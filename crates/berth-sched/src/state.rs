//! The mutable cluster state the engine places into: instances with interned
//! attributes, ports, ENIs and group counts.

use std::collections::{BTreeMap, BTreeSet};

use crate::hash::FastMap;

use berth_model::{InstanceStatus, PortSet, Protocol, ResourceKind};

use crate::{EniSlot, Instance, Placement, Reason, Scalars, SchedError, TaskRequest};

/// "No value": an absent attribute, an unbound ENI, no security groups.
pub(crate) const NONE: u32 = u32::MAX;

pub(crate) fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

const PROTOS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

#[derive(Debug, Clone)]
pub(crate) struct Eni {
    pub sg: u32,
    pub free: u32,
    pub cap: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub id: String,
    pub total: Scalars,
    pub free: Scalars,
    pub status: InstanceStatus,
    pub agent: bool,
    /// Value id per attribute id, or [`NONE`].
    pub attrs: Vec<u32>,
    pub range: (u16, u16),
    pub ports: PortSet,
    /// Free ports in the dynamic range, per protocol.
    pub dyn_free: [u32; 2],
    pub enis: Vec<Eni>,
    /// (group id, tasks), few per host.
    pub groups: Vec<(u32, u32)>,
    pub tasks: u32,
    /// The tasks on it that preemption and move hints may consider.
    pub running: Vec<Resident>,
}

/// A [`crate::Running`] task with its group interned.
#[derive(Debug, Clone)]
pub(crate) struct Resident {
    pub id: String,
    pub demand: Scalars,
    pub group: u32,
    pub tier: u8,
    pub protected: bool,
    pub started: u64,
    pub ports: PortSet,
    pub eni: Option<usize>,
}

impl Host {
    pub fn is_empty(&self) -> bool {
        self.tasks == 0 && self.free == self.total
    }

    pub fn group_count(&self, g: u32) -> u32 {
        self.groups.iter().find(|(id, _)| *id == g).map_or(0, |(_, n)| *n)
    }

    fn in_range(&self, port: u16) -> bool {
        port >= self.range.0 && port <= self.range.1
    }

    /// The ENI a task with security-group set `sg` would take an IP on.
    pub fn eni_for(&self, sg: u32) -> Option<usize> {
        self.enis
            .iter()
            .position(|e| e.sg == sg && e.free > 0)
            .or_else(|| self.enis.iter().position(|e| e.sg == NONE && e.free > 0))
    }

    /// Takes back a task's resources, ports, ENI IP and group count; says
    /// whether the group count went down (spread counts follow it).
    pub fn give_back(&mut self, demand: &Scalars, ports: &[(Protocol, u16)], eni: Option<usize>, group: u32) -> bool {
        self.free = self.free.saturating_add(demand);
        self.free = Scalars {
            cpu: self.free.cpu.min(self.total.cpu),
            memory_mib: self.free.memory_mib.min(self.total.memory_mib),
            network_mbps: self.free.network_mbps.min(self.total.network_mbps),
            gpus: self.free.gpus.min(self.total.gpus),
        };
        for (p, port) in ports {
            if self.ports.remove(*p, *port) && self.in_range(*port) {
                self.dyn_free[proto_index(*p)] += 1;
            }
        }
        if let Some(e) = eni.and_then(|i| self.enis.get_mut(i)) {
            e.free = (e.free + 1).min(e.cap);
            if e.free == e.cap {
                e.sg = NONE;
            }
        }
        self.tasks = self.tasks.saturating_sub(1);
        let Some(pos) = self.groups.iter().position(|(g, _)| *g == group) else {
            return false;
        };
        self.groups[pos].1 -= 1;
        if self.groups[pos].1 == 0 {
            self.groups.swap_remove(pos);
        }
        true
    }

    /// The ports a resident task holds, as (protocol, port) pairs.
    pub fn resident_ports(r: &Resident) -> Vec<(Protocol, u16)> {
        PROTOS
            .iter()
            .flat_map(|p| r.ports.set(*p).iter().map(|port| (*p, *port)))
            .collect()
    }

    /// Everything but constraints: the first short resource, if any.
    pub fn fits(&self, job: &Need<'_>) -> Result<(), ResourceKind> {
        self.free.covers(&job.demand)?;
        if job.has_ports {
            let mut in_range = [0u32; 2];
            for p in PROTOS {
                for port in job.static_ports.set(p) {
                    if self.ports.contains(p, *port) {
                        return Err(ResourceKind::Ports);
                    }
                    if self.in_range(*port) {
                        in_range[proto_index(p)] += 1;
                    }
                }
            }
            if (0..2).any(|i| self.dyn_free[i] < in_range[i] + job.dynamic[i]) {
                return Err(ResourceKind::Ports);
            }
        }
        if job.sg != NONE && self.eni_for(job.sg).is_none() {
            return Err(ResourceKind::Eni);
        }
        Ok(())
    }
}

/// Port access by protocol without exposing berth-model's private helpers.
pub(crate) trait PortsByProto {
    fn set(&self, p: Protocol) -> &BTreeSet<u16>;
}

impl PortsByProto for PortSet {
    fn set(&self, p: Protocol) -> &BTreeSet<u16> {
        match p {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }
}

/// The resource side of a task, resolved against the snapshot's interning.
#[derive(Debug, Clone)]
pub(crate) struct Need<'a> {
    pub demand: Scalars,
    pub static_ports: &'a PortSet,
    pub dynamic: [u32; 2],
    pub has_ports: bool,
    pub sg: u32,
    pub group: u32,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    pub ids: FastMap<String, u32>,
    pub names: Vec<String>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.names.push(s.to_string());
        id
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }
}

/// A consistent view of the cluster that batches are placed into. Each
/// [`Snapshot::place`](crate::Snapshot::place) call consumes the resources
/// it hands out, so consecutive batches never collide;
/// [`Snapshot::release`] gives a stopped task's resources back.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) hosts: Vec<Host>,
    pub(crate) host_ids: FastMap<String, u32>,
    pub(crate) attr_names: Interner,
    pub(crate) attr_values: Vec<Interner>,
    pub(crate) groups: Interner,
    pub(crate) sg_ids: FastMap<BTreeSet<String>, u32>,
    pub(crate) sg_sets: Vec<BTreeSet<String>>,
    /// Per spread attribute: tasks per (group, value); built on first use.
    pub(crate) spread: FastMap<u32, FastMap<(u32, u32), u32>>,
}

fn dyn_free(range: (u16, u16), used: &BTreeSet<u16>) -> u32 {
    if range.0 > range.1 {
        return 0;
    }
    let size = u32::from(range.1) - u32::from(range.0) + 1;
    size - used.range(range.0..=range.1).count() as u32
}

impl Snapshot {
    /// Takes the instances as they are now (remaining resources, used ports,
    /// ENIs, running groups).
    pub fn new(instances: Vec<Instance>) -> Self {
        let mut s = Snapshot {
            hosts: Vec::with_capacity(instances.len()),
            host_ids: FastMap::default(),
            attr_names: Interner::default(),
            attr_values: Vec::new(),
            groups: Interner::default(),
            sg_ids: FastMap::default(),
            sg_sets: Vec::new(),
            spread: FastMap::default(),
        };
        for inst in &instances {
            for name in inst.attributes.keys() {
                if s.attr_names.get(name).is_none() {
                    s.attr_names.intern(name);
                    s.attr_values.push(Interner::default());
                }
            }
        }
        for inst in instances {
            let mut attrs = vec![NONE; s.attr_names.names.len()];
            for (k, v) in &inst.attributes {
                if let Some(a) = s.attr_names.get(k) {
                    attrs[a as usize] = s.attr_values[a as usize].intern(v);
                }
            }
            let enis = inst
                .enis
                .iter()
                .map(|e: &EniSlot| Eni {
                    sg: if e.security_groups.is_empty() {
                        NONE
                    } else {
                        s.sg_id(&e.security_groups)
                    },
                    free: e.free_ips.min(e.capacity),
                    cap: e.capacity,
                })
                .collect();
            let mut groups: Vec<(u32, u32)> = Vec::new();
            for (g, n) in &inst.groups {
                if *n > 0 {
                    groups.push((s.groups.intern(g), *n));
                }
            }
            let running = inst
                .running
                .iter()
                .map(|r| Resident {
                    id: r.id.clone(),
                    demand: r.demand,
                    group: s.groups.intern(&r.group),
                    tier: r.tier,
                    protected: r.protected,
                    started: r.started,
                    ports: r.ports.clone(),
                    eni: r.eni,
                })
                .collect();
            let range = inst.port_range;
            let host = Host {
                running,
                dyn_free: [
                    dyn_free(range, &inst.used_ports.tcp),
                    dyn_free(range, &inst.used_ports.udp),
                ],
                id: inst.id.clone(),
                total: inst.total,
                free: inst.remaining,
                status: inst.status,
                agent: inst.agent_connected,
                attrs,
                range,
                ports: inst.used_ports,
                enis,
                tasks: groups.iter().map(|(_, n)| n).sum(),
                groups,
            };
            s.host_ids.insert(inst.id, s.hosts.len() as u32);
            s.hosts.push(host);
        }
        s
    }

    pub(crate) fn sg_id(&mut self, set: &BTreeSet<String>) -> u32 {
        if let Some(id) = self.sg_ids.get(set) {
            return *id;
        }
        let id = self.sg_sets.len() as u32;
        self.sg_ids.insert(set.clone(), id);
        self.sg_sets.push(set.clone());
        id
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The instance as it stands now (after the placements made so far).
    pub fn instance(&self, index: usize) -> Option<Instance> {
        let h = self.hosts.get(index)?;
        let mut attributes = BTreeMap::new();
        for (a, v) in h.attrs.iter().enumerate() {
            if *v != NONE {
                attributes.insert(
                    self.attr_names.names[a].clone(),
                    self.attr_values[a].names[*v as usize].clone(),
                );
            }
        }
        Some(Instance {
            id: h.id.clone(),
            total: h.total,
            remaining: h.free,
            attributes,
            status: h.status,
            agent_connected: h.agent,
            port_range: h.range,
            used_ports: h.ports.clone(),
            enis: h
                .enis
                .iter()
                .map(|e| EniSlot {
                    security_groups: if e.sg == NONE {
                        BTreeSet::new()
                    } else {
                        self.sg_sets[e.sg as usize].clone()
                    },
                    free_ips: e.free,
                    capacity: e.cap,
                })
                .collect(),
            groups: h
                .groups
                .iter()
                .map(|(g, n)| (self.groups.names[*g as usize].clone(), *n))
                .collect(),
            running: h
                .running
                .iter()
                .map(|r| crate::Running {
                    id: r.id.clone(),
                    demand: r.demand,
                    group: self.groups.names[r.group as usize].clone(),
                    tier: r.tier,
                    protected: r.protected,
                    started: r.started,
                    ports: r.ports.clone(),
                    eni: r.eni,
                })
                .collect(),
        })
    }

    /// Index of the instance with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.host_ids.get(id).map(|i| *i as usize)
    }

    pub(crate) fn need<'a>(&mut self, t: &'a TaskRequest) -> Need<'a> {
        let mut dynamic = [0u32; 2];
        for p in &t.dynamic_ports {
            dynamic[proto_index(*p)] += 1;
        }
        Need {
            demand: t.demand,
            static_ports: &t.static_ports,
            dynamic,
            has_ports: !t.static_ports.is_empty() || !t.dynamic_ports.is_empty(),
            sg: t.security_groups.as_ref().map_or(NONE, |s| self.sg_id(s)),
            group: self.groups.intern(&t.group),
        }
    }

    /// Takes `need` out of host `h` (which must fit it); returns the dynamic
    /// ports picked (in request order) and the ENI used. Dynamic ports are
    /// the first free ones from an offset `salt` picks in the range, wrapping.
    pub(crate) fn take(
        &mut self,
        h: usize,
        need: &Need<'_>,
        order: &[Protocol],
        salt: u64,
    ) -> (Vec<(Protocol, u16)>, Option<usize>) {
        let host = &mut self.hosts[h];
        host.free = host.free.saturating_sub(&need.demand);
        let mut picked = Vec::new();
        if need.has_ports {
            for p in PROTOS {
                for port in need.static_ports.set(p) {
                    if host.ports.insert(p, *port) && host.in_range(*port) {
                        host.dyn_free[proto_index(p)] -= 1;
                    }
                }
            }
            let (lo, hi) = host.range;
            let span = u64::from(hi.saturating_sub(lo)) + 1;
            let next = |port: u16| if port >= hi { lo } else { port + 1 };
            // `salt % span < span <= 65536`, so the offset fits a u16 range step.
            let start = lo.saturating_add(u16::try_from(salt % span).unwrap_or(0)).min(hi);
            let mut cursor = [start; 2];
            for p in order {
                let i = proto_index(*p);
                let mut port = cursor[i];
                let mut tried = 1u64;
                while host.ports.contains(*p, port) && tried < span {
                    port = next(port);
                    tried += 1;
                }
                // `fits` guaranteed a free port in range.
                host.ports.insert(*p, port);
                host.dyn_free[i] = host.dyn_free[i].saturating_sub(1);
                cursor[i] = next(port);
                picked.push((*p, port));
            }
        }
        let mut eni = None;
        if need.sg != NONE
            && let Some(i) = host.eni_for(need.sg)
        {
            host.enis[i].sg = need.sg;
            host.enis[i].free -= 1;
            eni = Some(i);
        }
        match host.groups.iter_mut().find(|(g, _)| *g == need.group) {
            Some((_, n)) => *n += 1,
            None => host.groups.push((need.group, 1)),
        }
        host.tasks += 1;
        let attrs = host.attrs.clone();
        for (a, counts) in self.spread.iter_mut() {
            *counts
                .entry((need.group, attrs.get(*a as usize).copied().unwrap_or(NONE)))
                .or_insert(0) += 1;
        }
        (picked, eni)
    }

    /// Gives back what a placed (or running) task holds: its resources, its
    /// static and dynamic ports, its ENI IP and its group count. Call it when
    /// the task stops, or to undo a placement the launcher could not commit.
    pub fn release(&mut self, task: &TaskRequest, placement: &Placement) -> Result<(), SchedError> {
        let h = self
            .index_of(&placement.instance_id)
            .ok_or_else(|| SchedError::UnknownInstance(placement.instance_id.clone()))?;
        let need = self.need(task);
        let mut freed: Vec<(Protocol, u16)> = placement.dynamic_ports.clone();
        for p in PROTOS {
            freed.extend(task.static_ports.set(p).iter().map(|port| (p, *port)));
        }
        if let Some(pos) = self.hosts[h].running.iter().position(|r| r.id == task.id) {
            self.hosts[h].running.swap_remove(pos);
        }
        self.give_back(h, &need.demand, freed, placement.eni, need.group);
        Ok(())
    }

    /// Stops the `i`th running task of host `h` in the snapshot (preemption).
    pub(crate) fn evict(&mut self, h: usize, i: usize) -> Resident {
        let r = self.hosts[h].running.swap_remove(i);
        let freed = Host::resident_ports(&r);
        self.give_back(h, &r.demand, freed, r.eni, r.group);
        r
    }

    fn give_back(&mut self, h: usize, demand: &Scalars, ports: Vec<(Protocol, u16)>, eni: Option<usize>, group: u32) {
        let host = &mut self.hosts[h];
        if host.give_back(demand, &ports, eni, group) {
            let attrs = host.attrs.clone();
            for (a, counts) in self.spread.iter_mut() {
                if let Some(n) = counts.get_mut(&(group, attrs.get(*a as usize).copied().unwrap_or(NONE))) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Spread counts for attribute `a`, building them on first use.
    pub(crate) fn ensure_spread(&mut self, a: u32) {
        if self.spread.contains_key(&a) {
            return;
        }
        let mut counts = FastMap::default();
        for h in &self.hosts {
            let v = h.attrs.get(a as usize).copied().unwrap_or(NONE);
            for (g, n) in &h.groups {
                *counts.entry((*g, v)).or_insert(0) += n;
            }
        }
        self.spread.insert(a, counts);
    }

    /// The first per-instance failure of `need` on host `h`, after status
    /// and constraint checks done by the caller.
    pub(crate) fn resource_reason(&self, h: usize, need: &Need<'_>) -> Option<Reason> {
        self.hosts[h].fits(need).err().map(Reason::Resource)
    }
}
