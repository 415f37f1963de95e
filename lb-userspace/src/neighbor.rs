//! Backend MAC addresses from the kernel's neighbour table (ARP / NDP), over rtnetlink, so the
//! user never types a MAC. A missing entry is provoked by sending one empty UDP datagram to the
//! backend, which makes the kernel resolve it.
use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

const RTM_GETNEIGH: u16 = 30;
const RTM_NEWNEIGH: u16 = 28;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// States that carry a usable link-layer address.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

#[repr(C)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
struct NdMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    state: u16,
    flags: u8,
    kind: u8,
}

/// Index of interface `name`, or an error naming it.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name).context("interface name contains a NUL byte")?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no interface named `{name}` (see `ip link`)");
    }
    Ok(index)
}

/// The MAC of `addr` on interface `ifindex`, resolving it if the kernel does not know it yet.
pub fn resolve(ifindex: u32, addr: IpAddr, timeout: Duration) -> Result<[u8; 6]> {
    if let Some(mac) = lookup(ifindex, addr)? {
        return Ok(mac);
    }
    provoke_resolution(addr);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = lookup(ifindex, addr)? {
            return Ok(mac);
        }
    }
    bail!("{addr} did not answer ARP/NDP within {timeout:?}: is it up and on this interface's network?")
}

fn provoke_resolution(addr: IpAddr) {
    let any: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(any, 0);
    if let Ok(socket) = UdpSocket::bind(bind) {
        // Port 9 (discard): the datagram itself does not matter, only the resolution it causes.
        let _ = socket.send_to(&[], SocketAddr::new(addr, 9));
    }
}

/// One look in the neighbour table.
pub fn lookup(ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>> {
    let entries = dump(if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8)?;
    Ok(entries
        .into_iter()
        .find(|e| e.ifindex == ifindex && e.addr == addr && e.state & NUD_USABLE != 0)
        .map(|e| e.mac))
}

/// Bit of an entry the kernel still uses but will re-verify first (`NUD_STALE`).
const NUD_STALE: u16 = 0x04;

/// What the neighbour table says of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    /// Not confirmed lately: the kernel re-verifies it on its next use.
    pub stale: bool,
}

/// The usable entries of `addrs` on `ifindex`, in their order, with one dump per address
/// family (a lookup per address would dump the table each time).
pub fn lookup_many(ifindex: u32, addrs: &[IpAddr]) -> Result<Vec<Option<Neighbour>>> {
    let mut entries = Vec::new();
    if addrs.iter().any(IpAddr::is_ipv4) {
        entries.extend(dump(libc::AF_INET as u8)?);
    }
    if addrs.iter().any(IpAddr::is_ipv6) {
        entries.extend(dump(libc::AF_INET6 as u8)?);
    }
    Ok(addrs
        .iter()
        .map(|addr| {
            entries
                .iter()
                .find(|e| e.ifindex == ifindex && e.addr == *addr && e.state & NUD_USABLE != 0)
                .map(|e| Neighbour {
                    mac: e.mac,
                    stale: e.state & NUD_STALE != 0,
                })
        })
        .collect())
}

/// Makes the kernel use (and so re-verify) its entry for `addr`: a stale entry whose host
/// changed its MAC is corrected by the kernel's probes, and seen by the next lookup.
pub fn reverify(addr: IpAddr) {
    provoke_resolution(addr);
}

struct Entry {
    ifindex: u32,
    addr: IpAddr,
    mac: [u8; 6],
    state: u16,
}

fn dump(family: u8) -> Result<Vec<Entry>> {
    // SAFETY: plain socket call; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a netlink socket");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut request = [0u8; size_of::<NlMsgHdr>() + size_of::<NdMsg>()];
    let header = NlMsgHdr {
        len: request.len() as u32,
        kind: RTM_GETNEIGH,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
    };
    // SAFETY: both structs are plain integers and fit the buffer.
    unsafe {
        std::ptr::write_unaligned(request.as_mut_ptr() as *mut NlMsgHdr, header);
        std::ptr::write_unaligned(
            request.as_mut_ptr().add(size_of::<NlMsgHdr>()) as *mut NdMsg,
            NdMsg {
                family,
                pad1: 0,
                pad2: 0,
                ifindex: 0,
                state: 0,
                flags: 0,
                kind: 0,
            },
        );
    }
    // SAFETY: sending a valid buffer on our socket.
    if unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error()).context("sending RTM_GETNEIGH");
    }

    let mut entries = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading the neighbour table");
        }
        let mut rest = &buffer[..n as usize];
        while rest.len() >= size_of::<NlMsgHdr>() {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < size_of::<NlMsgHdr>() || len > rest.len() {
                bail!("malformed netlink message (length {len})");
            }
            match kind {
                NLMSG_DONE => return Ok(entries),
                NLMSG_ERROR => bail!("netlink error while dumping neighbours"),
                RTM_NEWNEIGH => {
                    if let Some(entry) = parse_neighbour(&rest[size_of::<NlMsgHdr>()..len]) {
                        entries.push(entry);
                    }
                }
                _ => {}
            }
            let aligned = (len + 3) & !3;
            rest = &rest[aligned.min(rest.len())..];
        }
    }
}

fn parse_neighbour(body: &[u8]) -> Option<Entry> {
    if body.len() < size_of::<NdMsg>() {
        return None;
    }
    let family = body[0];
    let ifindex = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let state = u16::from_ne_bytes(body[8..10].try_into().ok()?);
    let mut attrs = &body[size_of::<NdMsg>()..];
    let (mut addr, mut mac) = (None, None);
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match (kind, value.len()) {
            (NDA_DST, 4) if family == libc::AF_INET as u8 => {
                addr = Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?));
            }
            (NDA_DST, 16) if family == libc::AF_INET6 as u8 => {
                addr = Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?));
            }
            (NDA_LLADDR, 6) => mac = Some(<[u8; 6]>::try_from(value).ok()?),
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    Some(Entry {
        ifindex,
        addr: addr?,
        mac: mac?,
        state,
    })
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// Multicast groups of address changes (`RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`).
const ADDRESS_GROUPS: u32 = 0x10 | 0x100;

/// Address notifications from rtnetlink: the kernel says when an address is added to or
/// removed from an interface (`ip addr add`, DHCP, SLAAC, DAD done).
pub struct AddressEvents {
    socket: OwnedFd,
}

impl AddressEvents {
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket call; the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a netlink socket");
        }
        // SAFETY: fd is a fresh descriptor we own.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl with the family and groups set, of its own size.
        let bound = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = ADDRESS_GROUPS;
            libc::bind(
                socket.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error()).context("subscribing to address notifications");
        }
        Ok(Self { socket })
    }

    /// Blocks until an address of interface `ifindex` changes, or for `timeout` at most.
    /// True when it changed, or when notifications were lost (the socket's buffer overflowed):
    /// either way the addresses must be read again. False on timeout or other interfaces' news.
    pub fn wait(&self, ifindex: u32, timeout: Duration) -> Result<bool> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut flags = 0;
        let mut changed = false;
        let mut poll = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd we own.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(error).context("waiting for address notifications");
        }
        if ready == 0 {
            return Ok(false);
        }
        // Everything queued, then the verdict: a burst of changes costs one re-read.
        loop {
            // SAFETY: receiving into our buffer.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    flags,
                )
            };
            flags = libc::MSG_DONTWAIT;
            if n < 0 {
                let error = io::Error::last_os_error();
                return match error.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(changed),
                    Some(libc::ENOBUFS) => Ok(true),
                    _ => Err(error).context("reading address notifications"),
                };
            }
            changed |= names_interface(&buffer[..n as usize], ifindex);
        }
    }
}

/// Whether a batch of netlink messages adds or removes an address of `ifindex`. Malformed
/// messages end the batch.
fn names_interface(mut rest: &[u8], ifindex: u32) -> bool {
    let header = size_of::<NlMsgHdr>();
    while rest.len() >= header {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < header || len > rest.len() {
            return false;
        }
        // struct ifaddrmsg: family, prefix length, flags, scope (one byte each), then the index.
        if matches!(kind, RTM_NEWADDR | RTM_DELADDR) && len >= header + 8 {
            let body = &rest[header..len];
            if u32::from_ne_bytes([body[4], body[5], body[6], body[7]]) == ifindex {
                return true;
            }
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    false
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_neighbour_dump_works() {
        // Any machine can dump its neighbour table; it may be empty.
        let entries = dump(libc::AF_INET as u8).unwrap_or_else(|e| panic!("{e:#}"));
        for entry in entries {
            assert!(entry.addr.is_ipv4());
        }
    }

    /// An address notification as the kernel sends it: header, ifaddrmsg, no attributes.
    fn address_message(kind: u16, ifindex: u32) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&24u32.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&[libc::AF_INET as u8, 24, 0, 0]);
        message.extend_from_slice(&ifindex.to_ne_bytes());
        message
    }

    #[test]
    fn address_notifications_are_told_apart_by_interface() {
        let mut batch = address_message(RTM_NEWADDR, 3);
        assert!(!names_interface(&batch, 2));
        batch.extend(address_message(RTM_DELADDR, 2));
        assert!(names_interface(&batch, 2));
        // Another kind of message about interface 2: not an address change.
        assert!(!names_interface(&address_message(RTM_NEWNEIGH, 2), 2));
        // Truncated and lying lengths end the batch without a panic.
        for cut in 0..batch.len() {
            let _ = names_interface(&batch[..cut], 2);
        }
        let mut lying = address_message(RTM_NEWADDR, 2);
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(!names_interface(&lying, 2));
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(!names_interface(&lying, 2));
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let error = ifindex("no-such-if0")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("no interface named `no-such-if0`"),
            "{error}"
        );
    }
}
