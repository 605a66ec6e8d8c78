//! Where the endpoint proxy may send a request. A serving script reports its endpoint as a
//! progress line, and a script's output is data, never an instruction: the proxy goes
//! only where the platform itself knows the task's process listens. The report gives a
//! port (and, locally, a loopback address); the dispatcher confirms it, and these rules
//! refuse what no serving task should ever be: a privileged port, the API's own port and
//! the control planes beside it, link-local and cloud metadata addresses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::error::Invalid;

/// The lowest port a serving task may report: the ports below belong to the system.
pub const LOWEST_PORT: u16 = 1024;

/// AWS's IPv6 instance metadata address (the IPv4 one is link-local).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// An endpoint as a serving task reported it: an IP literal and a port, parsed from
/// `http://IP:PORT[/]`. A host name is refused, since what it resolves to is not ours to
/// check ahead of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported(pub SocketAddr);

impl Reported {
    /// Parses `http://IP:PORT` with an optional trailing `/`; anything more (a host name,
    /// a path, user info, a query) is refused.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let invalid = |why: &str| Invalid::rule(format!("the reported endpoint {why}"));
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| invalid("is not an http:// URL"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '@', '?', '#']) {
            return Err(invalid("has more than an address and a port"));
        }
        authority
            .parse::<SocketAddr>()
            .map(Self)
            .map_err(|_| invalid("is not an IP address and a port"))
    }
}

/// Ports the proxy never reaches on any address: the API's own, Ray's dashboard and GCS,
/// the Lambda Runtime API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The reserved port numbers, refused whatever the address.
    pub ports: Vec<u16>,
}

/// Whether `target` may be proxied to: an address a serving process could own, on a port
/// above the system's and not reserved.
pub fn check_target(target: SocketAddr, reserved: &Reserved) -> Result<(), Invalid> {
    let refuse = |why: &str| Err(Invalid::rule(format!("endpoint {target} refused: {why}")));
    if target.port() < LOWEST_PORT {
        return refuse("a port below 1024");
    }
    if reserved.ports.contains(&target.port()) {
        return refuse("a port of the platform's own");
    }
    match target.ip() {
        IpAddr::V4(ip) if ip.is_link_local() || ip.is_broadcast() => refuse("a link-local address"),
        IpAddr::V6(ip) if ip == AWS_METADATA_V6 || (ip.segments()[0] & 0xffc0) == 0xfe80 => {
            refuse("a link-local or metadata address")
        }
        ip if ip.is_unspecified() || ip.is_multicast() => refuse("not a host's address"),
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => refuse("an IPv4-mapped address"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn only_an_ip_literal_and_a_port_over_http_is_a_reported_endpoint() {
        assert_eq!(
            Reported::parse("http://127.0.0.1:8080/"),
            Ok(Reported(addr("127.0.0.1:8080")))
        );
        assert_eq!(
            Reported::parse("http://[::1]:9000"),
            Ok(Reported(addr("[::1]:9000")))
        );
        for bad in [
            "https://127.0.0.1:8080",
            "http://localhost:8080",
            "http://lancer.example:80",
            "http://127.0.0.1:8080/admin",
            "http://user@127.0.0.1:8080",
            "http://127.0.0.1",
            "ftp://127.0.0.1:21",
        ] {
            assert!(Reported::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn privileged_reserved_link_local_and_metadata_targets_are_refused() {
        let reserved = Reserved {
            ports: vec![8265, 9001],
        };
        assert!(check_target(addr("127.0.0.1:8080"), &reserved).is_ok());
        assert!(check_target(addr("10.0.0.7:41000"), &reserved).is_ok());
        for bad in [
            "127.0.0.1:80",
            "127.0.0.1:8265",
            "10.1.2.3:9001",
            "169.254.169.254:8080",
            "[fd00:ec2::254]:8080",
            "[fe80::1]:8080",
            "0.0.0.0:8080",
            "[::ffff:169.254.169.254]:8080",
            "224.0.0.1:8080",
        ] {
            assert!(check_target(addr(bad), &reserved).is_err(), "{bad}");
        }
    }
}
