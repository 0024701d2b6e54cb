//! The resource vector every part of Berth speaks: CPU units, memory, network
//! bandwidth, GPUs, host ports and ENIs, with arithmetic that never underflows
//! silently.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Which resource was short when a subtraction or a fit check failed.
///
/// The `Display` form is the ECS failure reason (`RESOURCE:MEMORY`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceKind {
    Cpu,
    Memory,
    Network,
    Gpu,
    Ports,
    Eni,
}

impl ResourceKind {
    /// The ECS failure reason string for this resource.
    pub fn ecs_reason(self) -> &'static str {
        match self {
            ResourceKind::Cpu => "RESOURCE:CPU",
            ResourceKind::Memory => "RESOURCE:MEMORY",
            ResourceKind::Network => "RESOURCE:NETWORK",
            ResourceKind::Gpu => "RESOURCE:GPU",
            ResourceKind::Ports => "RESOURCE:PORTS",
            ResourceKind::Eni => "RESOURCE:ENI",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ecs_reason())
    }
}

/// A resource that would go below zero: what was short, and by how much
/// (in that resource's unit; ports and ENIs count items).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("insufficient {kind}: short by {short}")]
pub struct Shortfall {
    pub kind: ResourceKind,
    pub short: u64,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A set of TCP and UDP host ports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSet {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tcp: BTreeSet<u16>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub udp: BTreeSet<u16>,
}

impl PortSet {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    fn set(&self, p: Protocol) -> &BTreeSet<u16> {
        match p {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    fn set_mut(&mut self, p: Protocol) -> &mut BTreeSet<u16> {
        match p {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    pub fn contains(&self, p: Protocol, port: u16) -> bool {
        self.set(p).contains(&port)
    }

    pub fn insert(&mut self, p: Protocol, port: u16) -> bool {
        self.set_mut(p).insert(port)
    }

    pub fn remove(&mut self, p: Protocol, port: u16) -> bool {
        self.set_mut(p).remove(&port)
    }

    /// Ports in `self` that are also in `other`.
    pub fn overlap(&self, other: &PortSet) -> usize {
        self.tcp.intersection(&other.tcp).count() + self.udp.intersection(&other.udp).count()
    }
}

/// One elastic network interface: the security groups bound to it (empty
/// means unbound) and how many of its IP addresses are counted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Eni {
    #[serde(default)]
    pub security_groups: BTreeSet<String>,
    pub ips: u32,
}

/// A resource vector in ECS units.
///
/// As capacity, `ports` are the ports *in use* (reserved) and `enis` list each
/// interface with the IPs still free; as demand, `ports` are the static host
/// ports wanted and `enis` at most one entry: the security groups and IP count
/// the task needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU units; 1024 is one core.
    pub cpu: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Network bandwidth in Mbit/s.
    #[serde(default)]
    pub network_mbps: u64,
    #[serde(default)]
    pub gpus: u64,
    #[serde(default, skip_serializing_if = "PortSet::is_empty")]
    pub ports: PortSet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enis: Vec<Eni>,
}

fn sub(kind: ResourceKind, have: u64, want: u64) -> Result<u64, Shortfall> {
    have.checked_sub(want).ok_or_else(|| Shortfall {
        kind,
        short: want - have,
    })
}

impl Resources {
    pub fn new(cpu: u64, memory_mib: u64) -> Self {
        Resources {
            cpu,
            memory_mib,
            ..Default::default()
        }
    }

    /// The scalar dimensions only, for quick comparisons.
    pub fn scalars(&self) -> [u64; 4] {
        [self.cpu, self.memory_mib, self.network_mbps, self.gpus]
    }

    /// The first resource that `demand` needs more of than `self` has, if any.
    /// Checks scalars, that no wanted static port is already reserved, and that
    /// an ENI with the wanted security groups (or a free one) has the IPs.
    pub fn check_fits(&self, demand: &Resources) -> Result<(), Shortfall> {
        sub(ResourceKind::Cpu, self.cpu, demand.cpu)?;
        sub(ResourceKind::Memory, self.memory_mib, demand.memory_mib)?;
        sub(ResourceKind::Network, self.network_mbps, demand.network_mbps)?;
        sub(ResourceKind::Gpu, self.gpus, demand.gpus)?;
        let clash = self.ports.overlap(&demand.ports);
        if clash > 0 {
            return Err(Shortfall {
                kind: ResourceKind::Ports,
                short: clash as u64,
            });
        }
        if let Some(want) = demand.enis.first()
            && self.eni_for(want).is_none()
        {
            return Err(Shortfall {
                kind: ResourceKind::Eni,
                short: u64::from(want.ips),
            });
        }
        Ok(())
    }

    /// Index of the ENI that would serve `want`: one already bound to exactly
    /// the same security groups with enough IPs, else an unbound one.
    fn eni_for(&self, want: &Eni) -> Option<usize> {
        let bound = self
            .enis
            .iter()
            .position(|e| e.security_groups == want.security_groups && e.ips >= want.ips);
        bound.or_else(|| {
            self.enis
                .iter()
                .position(|e| e.security_groups.is_empty() && e.ips >= want.ips)
        })
    }

    /// Subtracts `demand` in place: scalars go down, wanted ports become
    /// reserved, the ENI picked gets bound and loses IPs. On error nothing
    /// changes and the error names the first short resource.
    pub fn checked_sub_assign(&mut self, demand: &Resources) -> Result<Option<usize>, Shortfall> {
        self.check_fits(demand)?;
        self.cpu -= demand.cpu;
        self.memory_mib -= demand.memory_mib;
        self.network_mbps -= demand.network_mbps;
        self.gpus -= demand.gpus;
        for p in &demand.ports.tcp {
            self.ports.tcp.insert(*p);
        }
        for p in &demand.ports.udp {
            self.ports.udp.insert(*p);
        }
        let mut picked = None;
        if let Some(want) = demand.enis.first()
            && let Some(i) = self.eni_for(want)
        {
            let eni = &mut self.enis[i];
            eni.security_groups.clone_from(&want.security_groups);
            eni.ips -= want.ips;
            picked = Some(i);
        }
        Ok(picked)
    }

    /// `self - demand`, or which resource is short.
    pub fn checked_sub(&self, demand: &Resources) -> Result<Resources, Shortfall> {
        let mut out = self.clone();
        out.checked_sub_assign(demand)?;
        Ok(out)
    }

    /// Gives back what `demand` took (`eni` is the index returned by
    /// [`Resources::checked_sub_assign`]; when unknown, the IPs go back to
    /// an ENI bound to the same security groups — IPs of such ENIs are
    /// interchangeable); saturates rather than overflows.
    pub fn release(&mut self, demand: &Resources, eni: Option<usize>, eni_capacity: u32) {
        let eni = eni.or_else(|| {
            let want = demand.enis.first()?;
            self.enis
                .iter()
                .position(|e| e.security_groups == want.security_groups && e.ips < eni_capacity)
        });
        self.cpu = self.cpu.saturating_add(demand.cpu);
        self.memory_mib = self.memory_mib.saturating_add(demand.memory_mib);
        self.network_mbps = self.network_mbps.saturating_add(demand.network_mbps);
        self.gpus = self.gpus.saturating_add(demand.gpus);
        for p in &demand.ports.tcp {
            self.ports.tcp.remove(p);
        }
        for p in &demand.ports.udp {
            self.ports.udp.remove(p);
        }
        if let (Some(i), Some(want)) = (eni, demand.enis.first())
            && let Some(e) = self.enis.get_mut(i)
        {
            e.ips = e.ips.saturating_add(want.ips).min(eni_capacity);
            if e.ips == eni_capacity {
                e.security_groups.clear();
            }
        }
    }

    /// Scalar sum, saturating.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(other.cpu),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            network_mbps: self.network_mbps.saturating_add(other.network_mbps),
            gpus: self.gpus.saturating_add(other.gpus),
            ports: PortSet::default(),
            enis: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sub_names_the_short_resource() {
        let have = Resources::new(1024, 2048);
        let err = have.checked_sub(&Resources::new(512, 4096)).unwrap_err();
        assert_eq!(err.kind, ResourceKind::Memory);
        assert_eq!(err.short, 2048);
        assert_eq!(err.kind.to_string(), "RESOURCE:MEMORY");
        let err = have.checked_sub(&Resources::new(2048, 1)).unwrap_err();
        assert_eq!(err.kind, ResourceKind::Cpu);
    }

    #[test]
    fn ports_are_never_double_reserved() {
        let mut have = Resources::new(4096, 4096);
        let mut want = Resources::new(1, 1);
        want.ports.insert(Protocol::Tcp, 80);
        have.checked_sub_assign(&want).unwrap();
        let err = have.checked_sub(&want).unwrap_err();
        assert_eq!(err.kind, ResourceKind::Ports);
        // UDP 80 is a different port.
        let mut udp = Resources::new(1, 1);
        udp.ports.insert(Protocol::Udp, 80);
        have.checked_sub_assign(&udp).unwrap();
        have.release(&want, None, 0);
        assert!(have.check_fits(&want).is_ok());
    }

    #[test]
    fn eni_binding_follows_security_groups() {
        let mut host = Resources::new(4096, 4096);
        host.enis = vec![
            Eni {
                security_groups: BTreeSet::new(),
                ips: 2
            };
            2
        ];
        let sg = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let mut a = Resources::new(1, 1);
        a.enis = vec![Eni {
            security_groups: sg(&["A", "B"]),
            ips: 1,
        }];
        let mut c = Resources::new(1, 1);
        c.enis = vec![Eni {
            security_groups: sg(&["C"]),
            ips: 1,
        }];
        assert_eq!(host.checked_sub_assign(&a).unwrap(), Some(0));
        assert_eq!(
            host.checked_sub_assign(&a).unwrap(),
            Some(0),
            "same set reuses the bound ENI"
        );
        assert_eq!(
            host.checked_sub_assign(&c).unwrap(),
            Some(1),
            "other set binds a free ENI"
        );
        assert_eq!(host.checked_sub(&a).unwrap_err().kind, ResourceKind::Eni);
        host.release(&a, Some(0), 2);
        host.release(&a, None, 2);
        assert!(
            host.enis[0].security_groups.is_empty(),
            "a fully released ENI is unbound (the index found by security groups when not given)"
        );
        host.release(&c, None, 2);
        assert!(host.enis[1].security_groups.is_empty() && host.enis[1].ips == 2);
    }

    proptest! {
        #[test]
        fn sub_then_release_round_trips(cpu in 0u64..10_000, mem in 0u64..10_000, dc in 0u64..10_000, dm in 0u64..10_000) {
            let have = Resources::new(cpu, mem);
            let want = Resources::new(dc, dm);
            match have.checked_sub(&want) {
                Ok(mut left) => {
                    prop_assert!(dc <= cpu && dm <= mem);
                    left.release(&want, None, 0);
                    prop_assert_eq!(left, have);
                }
                Err(e) => prop_assert!(dc > cpu || dm > mem, "{e}"),
            }
        }
    }
}
