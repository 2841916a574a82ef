//! The sockets of RFC 5881 and the one system call std and tokio do not offer: `recvmsg` with
//! control messages, which is the only way to learn a datagram's TTL (section 5 discards
//! anything below 255) and the address it was sent to (needed to pick a session before the
//! peer knows our discriminator, section 3).
//!
//! All `unsafe` of the crate lives here, next to the system call it serves.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::{SINGLE_HOP_TTL, TRANSMIT_TRAFFIC_CLASS};

/// What `recvmsg` told about one datagram besides its payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DatagramInfo {
    pub(crate) length: usize,
    pub(crate) source: SocketAddr,
    /// The destination address of the IP header; `None` if the kernel did not say.
    pub(crate) destination: Option<IpAddr>,
    /// The received TTL or hop limit; `None` if the kernel did not say.
    pub(crate) hop_limit: Option<u8>,
}

/// A socket for UDP port 3784 that reports each datagram's TTL and destination address.
pub(crate) fn receive_socket(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    match address {
        SocketAddr::V4(_) => {
            set_int_option(&socket, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
            set_int_option(&socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        }
        SocketAddr::V6(_) => {
            // An IPv4-mapped packet on the IPv6 socket would bypass the IPv4 socket's checks.
            socket.set_only_v6(true)?;
            set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
            set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A socket for one session's packets: bound to the session's local address and `port`, sending
/// with TTL 255 (RFC 5881 section 5) and the network control class FRR uses too (CS6).
pub(crate) fn transmit_socket(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    match address {
        SocketAddr::V4(_) => {
            socket.set_ttl_v4(u32::from(SINGLE_HOP_TTL))?;
            socket.set_tos_v4(u32::from(TRANSMIT_TRAFFIC_CLASS))?;
        }
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_unicast_hops_v6(u32::from(SINGLE_HOP_TTL))?;
            set_int_option(
                &socket,
                libc::IPPROTO_IPV6,
                libc::IPV6_TCLASS,
                i32::from(TRANSMIT_TRAFFIC_CLASS),
            )?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// One non-blocking `recvmsg`; `WouldBlock` when nothing is queued.
pub(crate) fn receive_with_info(
    socket: &impl AsRawFd,
    buffer: &mut [u8],
) -> io::Result<DatagramInfo> {
    receive_on_fd(socket.as_raw_fd(), buffer)
}

/// Room for a TTL and a packet-info message of either family, with alignment for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; 128]);

fn receive_on_fd(fd: RawFd, buffer: &mut [u8]) -> io::Result<DatagramInfo> {
    let mut source = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut control = ControlBuffer([0; 128]);
    let mut io_vector = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths); the fields
    // that matter are set below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_name = source.as_mut_ptr().cast();
    header.msg_namelen = socklen(size_of::<libc::sockaddr_storage>());
    header.msg_iov = &mut io_vector;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = control.0.len();
    // SAFETY: every pointer in `header` points at a live local buffer of the length given with
    // it, and all of them outlive the call.
    let received = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let length = usize::try_from(received).expect("recvmsg returned a non-negative length");
    // SAFETY: recvmsg filled in `msg_namelen` bytes of the (zero-initialised) storage.
    let source = unsafe { socket_address(source.assume_init_ref(), header.msg_namelen) }
        .ok_or_else(|| io::Error::other("recvmsg returned a source that is not IPv4 or IPv6"))?;
    let mut info = DatagramInfo {
        length: length.min(buffer.len()),
        source,
        destination: None,
        hop_limit: None,
    };
    if header.msg_flags & libc::MSG_CTRUNC != 0 {
        // Part of the control data is missing; what is left cannot be trusted to be complete,
        // so the datagram is reported as having no TTL, which gets it dropped.
        return Ok(info);
    }
    // SAFETY: `header` is the msghdr recvmsg just filled in; the CMSG_* macros only walk inside
    // `msg_control`/`msg_controllen`, and each payload read is checked against `cmsg_len`.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(&header);
        while !message.is_null() {
            let level = (*message).cmsg_level;
            let kind = (*message).cmsg_type;
            let data = libc::CMSG_DATA(message);
            let data_bytes = (*message).cmsg_len as usize - (data as usize - message as usize);
            match (level, kind) {
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
                    if data_bytes >= size_of::<libc::c_int>() =>
                {
                    let value = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    info.hop_limit = u8::try_from(value).ok();
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO)
                    if data_bytes >= size_of::<libc::in_pktinfo>() =>
                {
                    let packet_info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    info.destination = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        packet_info.ipi_addr.s_addr,
                    ))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if data_bytes >= size_of::<libc::in6_pktinfo>() =>
                {
                    let packet_info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    info.destination =
                        Some(IpAddr::V6(Ipv6Addr::from(packet_info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            message = libc::CMSG_NXTHDR(&header, message);
        }
    }
    Ok(info)
}

/// # Safety
/// `length` bytes of `storage` must have been written by the kernel as a socket address.
unsafe fn socket_address(
    storage: &libc::sockaddr_storage,
    length: libc::socklen_t,
) -> Option<SocketAddr> {
    let length = length as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if length >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let address =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                u16::from_be(address.sin_port),
            )))
        }
        libc::AF_INET6 if length >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let address = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(address.sin6_addr.s6_addr),
                u16::from_be(address.sin6_port),
                address.sin6_flowinfo,
                address.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its exact size is passed with it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            socklen(size_of::<libc::c_int>()),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socklen(bytes: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(bytes).expect("socket structures are small")
}
