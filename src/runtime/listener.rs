//! The listening sockets: one per shard, all bound to one port with `SO_REUSEPORT`, so the
//! kernel spreads new connections across shards and no shard accepts for another.
//!
//! The sockets are made here, before any executor starts, so a port conflict is a clear startup
//! error and `--http-port 0` resolves to one port shared by every shard.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::HttpConfig;
use crate::error::StartupError;

/// Binds `count` listening sockets on the configured address; returns them and the bound address.
pub(crate) fn bind_listeners(
    http: &HttpConfig,
    count: usize,
) -> Result<(Vec<Socket>, SocketAddr), StartupError> {
    let ip: IpAddr = http.address.parse().map_err(|_| {
        StartupError::new(format!(
            "http.address `{}` is not an IP address",
            http.address
        ))
    })?;
    let wanted = SocketAddr::new(ip, http.port);
    let domain = Domain::for_address(wanted);
    // A plain bind (SO_REUSEADDR, no SO_REUSEPORT) fails if anything listens there, including
    // another friday, whose SO_REUSEPORT sockets would otherwise silently share the port. With
    // `http.reuse_port` sharing is the point (a handover), so the probe joins the group instead:
    // it still fails if something that did not ask to share holds the port.
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| StartupError::new(format!("cannot create a TCP socket: {e}")))?;
    let _ = probe.set_reuse_address(true);
    if http.reuse_port {
        probe
            .set_reuse_port(true)
            .map_err(|e| StartupError::new(format!("cannot set SO_REUSEPORT: {e}")))?;
    }
    probe.bind(&SockAddr::from(wanted)).map_err(|e| {
        StartupError::new(format!(
            "cannot bind {wanted}: {e}: stop whatever listens there or pick another \
             --http-port (0 picks a free one){}",
            if http.reuse_port {
                "; http.reuse_port shares a port only with listeners that set SO_REUSEPORT \
                 under the same user, as friday does"
            } else {
                ""
            }
        ))
    })?;
    let port = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(http.port, |a| a.port());
    drop(probe);
    let addr = SocketAddr::new(ip, port);

    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| StartupError::new(format!("cannot create a TCP socket: {e}")))?;
        s.set_reuse_address(true)
            .and_then(|_| s.set_reuse_port(true))
            .map_err(|e| StartupError::new(format!("cannot set SO_REUSEPORT: {e}")))?;
        // Non-blocking: the epoll engine accepts until EAGAIN; io_uring does not mind.
        s.bind(&SockAddr::from(addr))
            .and_then(|_| s.listen(http.listen_backlog.min(i32::MAX as u32) as i32))
            .and_then(|_| s.set_nonblocking(true))
            .map_err(|e| {
                StartupError::new(format!(
                    "cannot listen on {addr}: {e}: another process took the port; retry or \
                     pick another --http-port"
                ))
            })?;
        sockets.push(s);
    }
    Ok((sockets, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: u16) -> HttpConfig {
        HttpConfig {
            address: "127.0.0.1".into(),
            port,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn port_zero_resolves_to_one_shared_port() {
        let (sockets, addr) = bind_listeners(&config(0), 2).unwrap();
        assert_ne!(addr.port(), 0);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap().as_socket().unwrap(), addr);
        }
    }

    #[test]
    fn reuse_port_joins_a_friday_but_not_a_plain_listener() {
        let mut sharing = config(0);
        sharing.reuse_port = true;
        let (_old, addr) = bind_listeners(&sharing, 2).unwrap();
        sharing.port = addr.port();
        let (new, again) = bind_listeners(&sharing, 2).unwrap();
        assert_eq!((new.len(), again), (2, addr));
        // Without the flag, the shared port is taken like any other.
        assert!(bind_listeners(&config(addr.port()), 1).is_err());

        // A listener without SO_REUSEPORT (another server) keeps its port.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sharing.port = plain.local_addr().unwrap().port();
        let e = bind_listeners(&sharing, 1).unwrap_err();
        assert!(e.0.contains("shares a port only with"), "{e}");
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let (_held, addr) = bind_listeners(&config(0), 1).unwrap();
        let e = bind_listeners(&config(addr.port()), 1).unwrap_err();
        assert!(e.0.contains("--http-port"), "{e}");
    }
}
