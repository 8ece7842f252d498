//! The kernel's view of the agent's own UDP sockets (RustDDS opens them; the agent has no
//! other UDP socket): how large their receive buffers really are, and how many datagrams
//! the kernel dropped because one was full. A drop the kernel makes is a sample lost (best
//! effort) or repaired late (reliable), and nothing above the socket can see it: this is
//! where it is counted.
//!
//! Linux only: the sockets are the `socket:[inode]` links in `/proc/self/fd`, their drops the
//! last column of `/proc/self/net/udp` and `udp6` (the process's own network namespace).

use std::collections::HashSet;
use std::os::fd::RawFd;

/// One of the agent's sockets (of any kind): its inode and a descriptor for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnSocket {
    pub inode: u64,
    pub fd: RawFd,
}

/// The process's sockets (of any kind): `socket:[inode]` links in `/proc/self/fd`.
fn own_sockets() -> std::io::Result<Vec<OwnSocket>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // A descriptor closed since the listing has no link: skipped.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&link.to_string_lossy()) {
            found.push(OwnSocket { inode, fd });
        }
    }
    Ok(found)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// One line of `/proc/net/udp`: (inode, drops). The header and lines that do not parse give
/// `None`.
fn udp_line(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    if fields.len() < 13 || !fields[0].ends_with(':') {
        return None;
    }
    Some((fields[9].parse().ok()?, fields[12].parse().ok()?))
}

/// The kernel's UDP table for this network namespace: (inode, drops) of every socket.
fn udp_table() -> std::io::Result<Vec<(u64, u64)>> {
    let mut rows = Vec::new();
    for path in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        match std::fs::read_to_string(path) {
            Ok(text) => rows.extend(text.lines().filter_map(udp_line)),
            // No IPv6 in this kernel: nothing to add.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

/// What the kernel says of the agent's UDP sockets right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpStats {
    /// How many UDP sockets the agent has.
    pub sockets: usize,
    /// Datagrams dropped on them since they were opened.
    pub drops: u64,
    /// The largest receive buffer among them, as `SO_RCVBUF` reports it (on Linux, twice
    /// what was granted to the data, for the kernel's bookkeeping): that of the listeners
    /// the agent sized (RustDDS's senders keep the default).
    pub receive_buffer: Option<u64>,
}

/// Reads [`UdpStats`] from `/proc`.
pub fn stats() -> std::io::Result<UdpStats> {
    let sockets = own_sockets()?;
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    let mut udp = HashSet::new();
    let mut drops = 0u64;
    for (inode, dropped) in udp_table()? {
        if inodes.contains(&inode) && udp.insert(inode) {
            drops += dropped;
        }
    }
    let largest_receive_buffer = sockets
        .iter()
        .filter(|s| udp.contains(&s.inode))
        .filter_map(|s| receive_buffer(s.fd))
        .max();
    Ok(UdpStats {
        sockets: udp.len(),
        drops,
        receive_buffer: largest_receive_buffer,
    })
}

/// `SO_RCVBUF` of a descriptor, if it still is a socket.
fn receive_buffer(fd: RawFd) -> Option<u64> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is a c_int; a
    // descriptor closed or reused in the meantime only makes the call fail or answer for
    // another socket, never touches memory.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && value > 0).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_the_udp_table_parse() {
        let header = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops";
        assert_eq!(udp_line(header), None);
        let line = " 1187: 00000000:1CE9 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 918273 2 ffff8f0e4c1e8000 865";
        assert_eq!(udp_line(line), Some((918273, 865)));
        assert_eq!(udp_line(" 12: short"), None);
        assert_eq!(socket_inode("socket:[918273]"), Some(918273));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_socket_of_ours_is_found_with_its_buffer() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let found = stats().unwrap();
        assert!(found.sockets >= 1, "{found:?}");
        assert!(found.receive_buffer.unwrap() > 0);
        drop(socket);
    }
}
