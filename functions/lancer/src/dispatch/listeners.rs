//! Which process groups own a listening TCP socket, read from `/proc`: how the local
//! dispatcher confirms that the port a serving task reported is its own and not another
//! service's on the same machine.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The TCP state `/proc/net/tcp` gives a listening socket.
const LISTEN: &str = "0A";

/// The process groups whose processes hold a socket listening where `target` would be
/// answered: on its address or on the wildcard of its family, on its port.
pub fn owners_of(target: SocketAddr) -> std::io::Result<HashSet<i32>> {
    let table = if target.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let inodes = listening_inodes(&std::fs::read_to_string(table)?, target);
    if inodes.is_empty() {
        return Ok(HashSet::new());
    }
    let mut groups = HashSet::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if holds_any(&entry.path(), &inodes)
            && let Some(group) = process_group(pid)
        {
            groups.insert(group);
        }
    }
    Ok(groups)
}

/// Whether process `dir` (`/proc/<pid>`) has one of `inodes` open. A process that went,
/// or whose descriptors this user may not read, holds none.
fn holds_any(dir: &Path, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|link| socket_inode(&link.to_string_lossy()))
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A process's group: the fifth field of `/proc/<pid>/stat`, after the parenthesised name
/// (which may itself hold spaces and parentheses).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// The command line of a process, argument by argument.
pub fn command_line(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// The inodes of the sockets in a `/proc/net/tcp{,6}` table listening on `target`'s port,
/// on its address or the wildcard.
fn listening_inodes(table: &str, target: SocketAddr) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let (ip, port) = parse_local(local)?;
            let answers = port == target.port() && (ip == target.ip() || ip.is_unspecified());
            answers.then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in the host's order.
fn parse_local(text: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_this_process_listens_on_is_owned_by_its_group() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let owners = owners_of(addr).expect("read /proc");
        let own_group = nix::unistd::getpgrp().as_raw();
        assert_eq!(owners, HashSet::from([own_group]));
        drop(listener);
        assert!(owners_of(addr).expect("read /proc").is_empty());
    }

    #[test]
    fn local_addresses_parse_in_the_hosts_word_order() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        let parsed = parse_local(&format!("{v4:08X}:1F90"));
        assert_eq!(parsed, Some(("127.0.0.1".parse().expect("ip"), 8080)));
        assert_eq!(parse_local("nonsense"), None);
    }
}
