//! Addresses as Envoy writes them: `{"socketAddress": {"address": "0.0.0.0", "portValue": 15001}}`.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// An IP and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketAddress {
    pub address: IpAddr,
    pub port_value: u16,
}

impl From<SocketAddr> for SocketAddress {
    fn from(a: SocketAddr) -> Self {
        SocketAddress {
            address: a.ip(),
            port_value: a.port(),
        }
    }
}

impl From<SocketAddress> for SocketAddr {
    fn from(a: SocketAddress) -> Self {
        SocketAddr::new(a.address, a.port_value)
    }
}

/// Envoy's `Address` wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Address {
    pub socket_address: SocketAddress,
}

impl Address {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Address {
            socket_address: SocketAddress {
                address: ip,
                port_value: port,
            },
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.socket_address.into()
    }
}

/// A CIDR range: `{"addressPrefix": "10.244.0.22", "prefixLen": 32}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRange {
    pub address_prefix: IpAddr,
    pub prefix_len: u8,
}

impl CidrRange {
    /// `ADDRESS/LEN` (or an address alone, its full length), `None` when it is neither or the
    /// length is longer than the address's.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
            None => {
                let ip: IpAddr = s.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let range = CidrRange {
            address_prefix: ip,
            prefix_len: len,
        };
        (len <= range.max_len()).then_some(range)
    }

    /// Whether `ip` falls in this range (an IPv4 range never contains an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address_prefix, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) if self.prefix_len <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) if self.prefix_len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    pub fn max_len(&self) -> u8 {
        if self.address_prefix.is_ipv4() {
            32
        } else {
            128
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let r = CidrRange {
            address_prefix: "10.244.0.0".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(r.contains("10.244.3.4".parse().unwrap()));
        assert!(!r.contains("10.245.0.1".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        let all = CidrRange {
            address_prefix: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
        };
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host = CidrRange {
            address_prefix: "fd00::1".parse().unwrap(),
            prefix_len: 128,
        };
        assert!(
            host.contains("fd00::1".parse().unwrap()) && !host.contains("fd00::2".parse().unwrap())
        );
    }

    #[test]
    fn envoy_json_shape() {
        let a = Address::new("0.0.0.0".parse().unwrap(), 15001);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"socketAddress":{"address":"0.0.0.0","portValue":15001}}"#
        );
    }
}
