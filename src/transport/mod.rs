//! The QUIC and TLS plumbing both roles use: TLS configuration with mutual
//! authentication ([`tls`]), control frames over a QUIC stream ([`framed`],
//! the IO shell around `proto::control`), the device's swappable verifier of
//! the relay ([`relay_roots`]), and the gateway's link types that its
//! session, uplink and phone bridge share ([`link`]).

pub mod framed;
pub mod link;
pub mod relay_roots;
pub mod tls;

/// Split `host:port` / `[v6]:port`; the port must be a non-zero u16.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(':') || s.starts_with('[')).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.b:443"), Some(("a.b", 443)));
        assert_eq!(split_host_port("[::1]:4433"), Some(("::1", 4433)));
        assert_eq!(split_host_port("::1:4433"), None);
        assert_eq!(split_host_port("a:0"), None);
        assert_eq!(split_host_port(":1"), None);
    }
}
