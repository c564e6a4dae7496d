//! A minimal IPv4/IPv6 prefix type (no extra dependency needed for this little arithmetic).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range `network/prefix`; the stored address is always the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Range from any address inside it and a prefix length.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let bits = bits_of(&addr);
        if prefix > bits {
            return None;
        }
        let n = to_u128(addr) & mask(bits, prefix);
        Some(Self { network: from_u128(n, addr.is_ipv6()), prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    fn bits(&self) -> u8 {
        bits_of(&self.network)
    }

    /// Number of host bits.
    pub fn host_bits(&self) -> u8 {
        self.bits() - self.prefix
    }

    /// The address at offset `n` from the network address, if inside the range.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let hb = self.host_bits();
        if hb < 128 && n >> hb != 0 {
            return None;
        }
        Some(from_u128(to_u128(self.network) + n, self.is_ipv6()))
    }

    /// Offset of `ip` from the network address, if inside the range.
    pub fn offset(&self, ip: IpAddr) -> Option<u128> {
        if !self.contains(ip) {
            return None;
        }
        Some(to_u128(ip) - to_u128(self.network))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6() && to_u128(ip) & mask(self.bits(), self.prefix) == to_u128(self.network)
    }

    /// The gateway: first address after the network address.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.nth(1)
    }

    /// Offsets usable for pods: `[first, last]`, excluding network, gateway and (IPv4) broadcast.
    pub fn pod_offsets(&self) -> Option<(u128, u128)> {
        let hb = self.host_bits();
        let size_minus_one = if hb >= 128 { u128::MAX } else { (1u128 << hb) - 1 };
        let last = if self.is_ipv6() { size_minus_one } else { size_minus_one.checked_sub(1)? };
        if last < 2 {
            return None;
        }
        Some((2, last))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (addr/prefix)"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: bad address: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: bad prefix length: {e}"))?;
        Cidr::new(addr, prefix).ok_or_else(|| format!("{s:?}: prefix length too long"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits_of(a: &IpAddr) -> u8 {
    if a.is_ipv6() {
        128
    } else {
        32
    }
}

fn mask(bits: u8, prefix: u8) -> u128 {
    let all: u128 = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    if prefix == 0 {
        0
    } else {
        all & !(all >> prefix)
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4() {
        let c: Cidr = "10.88.1.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway().unwrap().to_string(), "10.88.0.1");
        assert_eq!(c.pod_offsets(), Some((2, 65534)));
        assert!(c.contains("10.88.255.255".parse().unwrap()));
        assert!(!c.contains("10.89.0.0".parse().unwrap()));
        assert_eq!(c.nth(65535).unwrap().to_string(), "10.88.255.255");
        assert_eq!(c.nth(65536), None);
        let small: Cidr = "10.0.0.0/30".parse().unwrap();
        assert_eq!(small.pod_offsets(), Some((2, 2)));
        let tiny: Cidr = "10.0.0.0/31".parse().unwrap();
        assert_eq!(tiny.pod_offsets(), None);
        let s29: Cidr = "10.0.0.0/29".parse().unwrap();
        assert_eq!(s29.pod_offsets(), Some((2, 6)));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn v6() {
        let c: Cidr = "fd00:88::5/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd00:88::/64");
        assert_eq!(c.gateway().unwrap().to_string(), "fd00:88::1");
        assert_eq!(c.pod_offsets(), Some((2, (1u128 << 64) - 1)));
        assert_eq!(c.offset("fd00:88::10".parse().unwrap()), Some(16));
    }
}
