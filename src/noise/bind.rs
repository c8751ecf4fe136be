//! Binding the listening socket of the node and the relay with a deep accept queue.
//!
//! A connection flood from one address (issue 9) keeps the accept loop busy; while it catches
//! up, new connections wait in the kernel's accept queue. `tokio::net::TcpListener::bind`
//! asks for 1024 places; when they are full the kernel drops the peer's final handshake ACK
//! and retransmits its SYN-ACK only after 1 s, then 2 s more, so a contact that connects
//! during the flood is delayed by whole seconds before the node even sees it. [`listen`]
//! asks for [`BACKLOG`] places (the kernel caps it at `net.core.somaxconn`).

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Accept-queue length asked of the kernel.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and listens with a
/// [`BACKLOG`]-deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_an_os_chosen_port_and_accepts() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        drop(s);
        // The port is taken while the listener lives.
        assert!(listen(addr).is_err());
    }
}
