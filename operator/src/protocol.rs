//! Istio's protocol selection for a Service port: `appProtocol`, else the port name's prefix
//! (`http-web` → HTTP), else TCP for a few well-known ports, else "auto" (sniffed: both an HTTP
//! and a TCP filter chain).

/// A port's protocol, as Istio's `protocol.Instance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Tcp,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Not declared: detected per connection (auto).
    Unsupported,
}

/// What kind of outbound/inbound listener a protocol gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerProtocol {
    Http,
    Tcp,
    /// Both: an HTTP chain for sniffed HTTP, TCP otherwise.
    Auto,
    /// No listener (UDP).
    None,
}

/// Ports Istio treats as TCP when their name says nothing (sniffing would break server-first protocols).
const WELL_KNOWN_TCP_PORTS: [u16; 4] = [25, 53, 3306, 27017];

impl Protocol {
    /// Istio's `protocol.Parse`: case-insensitive, unknown names are [`Protocol::Unsupported`].
    pub fn parse(name: &str) -> Protocol {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" => Protocol::Http2,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// Istio's `kube.ConvertProtocol` for a Service port.
    pub fn of_service_port(
        port: u16,
        name: Option<&str>,
        l4: Option<&str>,
        app_protocol: Option<&str>,
    ) -> Protocol {
        if l4.is_some_and(|p| p.eq_ignore_ascii_case("UDP")) {
            return Protocol::Udp;
        }
        if l4.is_some_and(|p| p.eq_ignore_ascii_case("SCTP")) {
            return Protocol::Udp; // no listener either
        }
        let mut name = name.unwrap_or_default();
        if let Some(app) = app_protocol {
            match app {
                "kubernetes.io/h2c" => return Protocol::Http2,
                "kubernetes.io/ws" => return Protocol::Http,
                "kubernetes.io/wss" => return Protocol::Https,
                _ => name = app,
            }
        }
        if name.len() >= 8 && name[..8].eq_ignore_ascii_case("grpc-web") {
            return Protocol::GrpcWeb;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        match Protocol::parse(prefix) {
            Protocol::Unsupported if WELL_KNOWN_TCP_PORTS.contains(&port) => Protocol::Tcp,
            p => p,
        }
    }

    pub fn listener(self) -> ListenerProtocol {
        match self {
            Protocol::Http
            | Protocol::Http2
            | Protocol::HttpProxy
            | Protocol::Grpc
            | Protocol::GrpcWeb => ListenerProtocol::Http,
            Protocol::Tcp
            | Protocol::Https
            | Protocol::Tls
            | Protocol::Mongo
            | Protocol::Redis
            | Protocol::Mysql => ListenerProtocol::Tcp,
            Protocol::Udp => ListenerProtocol::None,
            Protocol::Unsupported => ListenerProtocol::Auto,
        }
    }

    /// Whether the upstream speaks HTTP/2 (h2c): gRPC and HTTP2 ports.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_protocol_selection() {
        let p = |port, name, app| Protocol::of_service_port(port, name, Some("TCP"), app);
        assert_eq!(p(9080, Some("http"), None), Protocol::Http);
        assert_eq!(p(9080, Some("http-web"), None), Protocol::Http);
        assert_eq!(p(9080, Some("HTTP2-x"), None), Protocol::Http2);
        assert_eq!(p(50051, Some("grpc"), None), Protocol::Grpc);
        assert_eq!(p(8080, Some("grpc-web-ui"), None), Protocol::GrpcWeb);
        assert_eq!(p(27017, Some("mongo"), None), Protocol::Mongo);
        assert_eq!(p(6379, Some("redis"), None), Protocol::Redis);
        assert_eq!(p(443, Some("https"), None), Protocol::Https);
        assert_eq!(p(5432, Some("tcp-postgres"), None), Protocol::Tcp);
        // Unnamed or unknown: auto, except the well-known server-first ports.
        assert_eq!(p(80, None, None), Protocol::Unsupported);
        assert_eq!(p(9153, Some("metrics"), None), Protocol::Unsupported);
        assert_eq!(p(53, Some("dns-tcp"), None), Protocol::Tcp);
        assert_eq!(p(3306, None, None), Protocol::Tcp);
        // appProtocol wins over the name.
        assert_eq!(p(80, Some("tcp"), Some("http")), Protocol::Http);
        assert_eq!(p(80, None, Some("kubernetes.io/h2c")), Protocol::Http2);
        assert_eq!(
            Protocol::of_service_port(53, Some("dns"), Some("UDP"), None),
            Protocol::Udp
        );
        assert_eq!(Protocol::Udp.listener(), ListenerProtocol::None);
        assert_eq!(Protocol::Unsupported.listener(), ListenerProtocol::Auto);
        assert_eq!(Protocol::Mongo.listener(), ListenerProtocol::Tcp);
    }
}
