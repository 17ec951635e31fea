"""Sidecar configurations for the benchmark job, one per contestant.

Both documents do the same job, in the same shape as Istio's sidecars: a 15001 virtual outbound
listener that hands connections to a per-destination listener by original destination, a 15006
virtual inbound listener whose chains match the destination port, an HTTP connection manager with
one route (HTTP ports) or a tcp_proxy (the TCP port), and the built-in passthrough / blackhole
clusters. One document serves both sides: the client's sidecar uses the outbound half, the
server's the inbound half. No access log on either (the `-alog` pair adds Istio's: see
`with_access_log_rustmesh`), no tracing (the `-trace1` / `-trace100` pairs add Istio's Zipkin
tracing: see `with_tracing_rustmesh`).

A third port (`conn_port`) carries HTTP but is declared opaque TCP to both sidecars: each
connection the client opens there is one sidecar-to-sidecar connection (the HTTP port's pools
would keep theirs), so a new connection per request is a new TLS handshake per request.

With `mtls`, the pair does Istio's mutual TLS between the two sidecars, each from the same
files (see `bench/run`'s `make_certs`): rustmesh with `transportSocketMatches` (auto mTLS) and
`transportSocket` chains as its operator renders them, Envoy with static
`UpstreamTlsContext` / `DownstreamTlsContext` doing the same: TLS 1.3, Istio's SNI and ALPN,
the server's SPIFFE id checked by the client, a client certificate required by the server,
session resumption on for both and equally available (Envoy's client keeps 8 sessions, as many
TLS 1.3 tickets as rustls' keeps per server), or, with `RESUMPTION["on"] = False` (`bench/run
--full-handshakes`), off on both ends of both (rustmesh: `maxSessionKeys: 0` and
`disableStatefulSessionResumption`; Envoy: `max_session_keys: 0` and both `disable_*`), so that
every new connection is a full handshake.
"""

import json
import os

# Session resumption between the sidecars of the mTLS pair (bench/run --full-handshakes: off).
RESUMPTION = {"on": True}

SERVICE = "server.bench.svc.cluster.local"


# ---- rustmesh: a ProxyConfig (see xds/tests/fixtures/productpage.json) ----------------------


def _addr(ip, port):
    return {"socketAddress": {"address": ip, "portValue": port}}


def _tcp(cluster):
    return [
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"statPrefix": cluster, "cluster": cluster},
        }
    ]


def _hcm(prefix, cluster):
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "statPrefix": prefix,
                "routeConfig": {
                    "name": prefix,
                    "virtualHosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                {
                                    "name": "default",
                                    "match": {"prefix": "/"},
                                    "route": {"cluster": cluster, "timeout": "0s"},
                                }
                            ],
                        }
                    ],
                },
            },
        }
    ]


HTTP_APPS = ["http/1.1", "h2c"]
TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
# Istio's ALPN (xds/src/tls.rs: ALPN_ISTIO_TCP, ALPN_ISTIO_HTTP, ALPN_ISTIO_ALL)
ALPN_TCP = ["istio-peer-exchange", "istio"]
ALPN_HTTP = ["istio-http/1.0", "istio-http/1.1", "istio-h2"]
ALPN_ALL = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]


def sni(port):
    """Istio's SNI for a cluster (xds::tls::istio_sni)."""
    return f"outbound_.{port}_._.{SERVICE}"


def _rm_tls(alpn):
    """rustmesh's inbound mTLS transport socket (xds::tls::istio_downstream)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "commonTlsContext": {
                "alpnProtocols": alpn,
                "tlsCertificateSdsSecretConfigs": [{"name": "default"}],
                "combinedValidationContext": {
                    "defaultValidationContext": {},
                    "validationContextSdsSecretConfig": {"name": "ROOTCA"},
                },
            },
            "requireClientCertificate": True,
            **({} if RESUMPTION["on"] else {"disableStatefulSessionResumption": True}),
        },
    }


def _rm_auto_mtls(port):
    """Istio's auto-mTLS matches of an outbound cluster (xds::tls::auto_mtls_matches)."""
    return [
        {
            "name": "tlsMode-istio",
            "match": {"tlsMode": "istio"},
            "transportSocket": {
                "name": "envoy.transport_sockets.tls",
                "typedConfig": {
                    "commonTlsContext": {
                        "alpnProtocols": ALPN_TCP,
                        "tlsCertificateSdsSecretConfigs": [{"name": "default"}],
                        "combinedValidationContext": {
                            "defaultValidationContext": {"matchSubjectAltNames": [{"exact": SERVER_ID}]},
                            "validationContextSdsSecretConfig": {"name": "ROOTCA"},
                        },
                    },
                    "sni": sni(port),
                    **({} if RESUMPTION["on"] else {"maxSessionKeys": 0}),
                },
            },
        },
        {"name": "tlsMode-disabled", "match": {}, "transportSocket": {"name": "envoy.transport_sockets.raw_buffer", "typedConfig": {}}},
    ]


def rustmesh(server_ip, http_port, tcp_port, conn_port, mtls=False):
    """The ProxyConfig of both sidecars; with `mtls`, inbound mTLS chains first (Istio's
    PERMISSIVE shape) and auto mTLS towards the server's endpoints (tlsMode: istio). The
    certificates come from `proxy run --file-mounted-certs`."""
    out_http = f"outbound|{http_port}||{SERVICE}"
    out_tcp = f"outbound|{tcp_port}||{SERVICE}"
    out_conn = f"outbound|{conn_port}||{SERVICE}"
    in_http = f"inbound|{http_port}||"
    in_tcp = f"inbound|{tcp_port}||"
    in_conn = f"inbound|{conn_port}||"
    tls_chains = []
    if mtls:
        tls_chains = [
            {
                "name": f"0.0.0.0_{http_port}",
                "filterChainMatch": {"destinationPort": http_port, "transportProtocol": "tls",
                                     "applicationProtocols": ALPN_HTTP},
                "transportSocket": _rm_tls(["h2", "http/1.1"]),
                "filters": _hcm(f"inbound_0.0.0.0_{http_port}", in_http),
            }
        ] + [
            {
                "name": f"0.0.0.0_{port}",
                "filterChainMatch": {"destinationPort": port, "transportProtocol": "tls",
                                     "applicationProtocols": ALPN_ALL},
                "transportSocket": _rm_tls(ALPN_TCP),
                "filters": _tcp(cluster),
            }
            for port, cluster in ((tcp_port, in_tcp), (conn_port, in_conn))
        ]
    listeners = [
        {
            "name": "virtualOutbound",
            "address": _addr("0.0.0.0", 15001),
            "trafficDirection": "OUTBOUND",
            "useOriginalDst": True,
            "filterChains": [
                {
                    "name": "virtualOutbound-blackhole",
                    "filterChainMatch": {"destinationPort": 15001},
                    "filters": _tcp("BlackHoleCluster"),
                },
                {"name": "virtualOutbound-catchall-tcp", "filters": _tcp("PassthroughCluster")},
            ],
        },
        {
            "name": "virtualInbound",
            "address": _addr("0.0.0.0", 15006),
            "trafficDirection": "INBOUND",
            "useOriginalDst": True,
            "filterChains": [
                {
                    "name": "virtualInbound-blackhole",
                    "filterChainMatch": {"destinationPort": 15006},
                    "filters": _tcp("BlackHoleCluster"),
                },
                *tls_chains,
                {
                    "name": f"0.0.0.0_{http_port}",
                    "filterChainMatch": {
                        "destinationPort": http_port,
                        "transportProtocol": "raw_buffer",
                        "applicationProtocols": HTTP_APPS,
                    },
                    "filters": _hcm(f"inbound_0.0.0.0_{http_port}", in_http),
                },
                {
                    "name": f"0.0.0.0_{http_port}",
                    "filterChainMatch": {"destinationPort": http_port, "transportProtocol": "raw_buffer"},
                    "filters": _tcp(in_http),
                },
                {
                    "name": f"0.0.0.0_{tcp_port}",
                    "filterChainMatch": {"destinationPort": tcp_port},
                    "filters": _tcp(in_tcp),
                },
                {
                    "name": f"0.0.0.0_{conn_port}",
                    "filterChainMatch": {"destinationPort": conn_port},
                    "filters": _tcp(in_conn),
                },
                {
                    "name": "virtualInbound",
                    "filterChainMatch": {"prefixRanges": [{"addressPrefix": "0.0.0.0", "prefixLen": 0}]},
                    "filters": _tcp("InboundPassthroughClusterIpv4"),
                },
            ],
        },
        {
            "name": f"{server_ip}_{http_port}",
            "address": _addr(server_ip, http_port),
            "trafficDirection": "OUTBOUND",
            "bindToPort": False,
            "filterChains": [
                {
                    "filterChainMatch": {"transportProtocol": "raw_buffer", "applicationProtocols": HTTP_APPS},
                    "filters": _hcm(f"outbound_{server_ip}_{http_port}", out_http),
                }
            ],
            "defaultFilterChain": {"name": "PassthroughFilterChain", "filters": _tcp(out_http)},
            "listenerFiltersTimeout": "0.1s",
        },
        {
            "name": f"{server_ip}_{tcp_port}",
            "address": _addr(server_ip, tcp_port),
            "trafficDirection": "OUTBOUND",
            "bindToPort": False,
            "filterChains": [{"filters": _tcp(out_tcp)}],
        },
        {
            "name": f"{server_ip}_{conn_port}",
            "address": _addr(server_ip, conn_port),
            "trafficDirection": "OUTBOUND",
            "bindToPort": False,
            "filterChains": [{"filters": _tcp(out_conn)}],
        },
    ]
    big = 4294967295
    breakers = {
        "thresholds": [
            {"maxConnections": big, "maxPendingRequests": big, "maxRequests": big, "maxRetries": big}
        ]
    }

    def static(name, ip, port):
        return {
            "name": name,
            "type": "STATIC",
            "connectTimeout": "10s",
            "lbPolicy": "ROUND_ROBIN",
            "loadAssignment": {
                "clusterName": name,
                "endpoints": [{"lbEndpoints": [{"endpoint": {"address": _addr(ip, port)}}]}],
            },
            "circuitBreakers": breakers,
        }

    def eds(name, port):
        c = {
            "name": name,
            "type": "EDS",
            "connectTimeout": "10s",
            "lbPolicy": "LEAST_REQUEST",
            "edsClusterConfig": {"serviceName": name},
            "circuitBreakers": breakers,
            "metadata": {"services": [{"host": SERVICE, "name": "server", "namespace": "bench"}]},
        }
        if mtls:
            c["transportSocketMatches"] = _rm_auto_mtls(port)
        return c

    def endpoint(port):
        e = {"endpoint": {"address": _addr(server_ip, port)}}
        if mtls:  # the server pod has a sidecar (security.istio.io/tlsMode: istio)
            e["metadata"] = {"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
        return e

    clusters = [
        {
            "name": "BlackHoleCluster",
            "type": "STATIC",
            "connectTimeout": "10s",
            "loadAssignment": {"clusterName": "BlackHoleCluster", "endpoints": []},
        },
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connectTimeout": "10s", "lbPolicy": "CLUSTER_PROVIDED"},
        {
            "name": "InboundPassthroughClusterIpv4",
            "type": "ORIGINAL_DST",
            "connectTimeout": "10s",
            "lbPolicy": "CLUSTER_PROVIDED",
            "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}},
        },
        static(in_http, "127.0.0.1", http_port),
        static(in_tcp, "127.0.0.1", tcp_port),
        static(in_conn, "127.0.0.1", conn_port),
        eds(out_http, http_port),
        eds(out_tcp, tcp_port),
        eds(out_conn, conn_port),
    ]
    endpoints = [
        {"clusterName": name, "endpoints": [{"lbEndpoints": [endpoint(port)]}]}
        for name, port in ((out_http, http_port), (out_tcp, tcp_port), (out_conn, conn_port))
    ]
    return {
        "versionInfo": "bench-1",
        "listeners": listeners,
        "clusters": clusters,
        "endpoints": endpoints,
    }


# ---- Envoy: a static bootstrap doing the same job ------------------------------------------

T = "type.googleapis.com/envoy.extensions."


def _sa(ip, port):
    return {"socket_address": {"address": ip, "port_value": port}}


def _etcp(cluster):
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": T + "filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": cluster, "cluster": cluster},
    }


def _ehcm(prefix, cluster):
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "codec_type": "AUTO",
            "route_config": {
                "name": prefix,
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
                    }
                ],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": T + "filters.http.router.v3.Router"}}],
        },
    }


ORIGINAL_DST = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": T + "filters.listener.original_dst.v3.OriginalDst"},
}
HTTP_INSPECTOR = {
    "name": "envoy.filters.listener.http_inspector",
    "typed_config": {"@type": T + "filters.listener.http_inspector.v3.HttpInspector"},
}


TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {"@type": T + "filters.listener.tls_inspector.v3.TlsInspector"},
}
TLS13 = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}


def _common_tls(certs, alpn, peer=None):
    """The pod's certificate and the root from files (what Istio's SDS `default` and `ROOTCA`
    serve), TLS 1.3 only (rustls negotiates 1.3 too; Envoy's client default is at most 1.2),
    and the peer's SPIFFE id when given."""
    validation = {"trusted_ca": {"filename": os.path.join(certs, "root-cert.pem")}}
    if peer:
        validation["match_typed_subject_alt_names"] = [{"san_type": "URI", "matcher": {"exact": peer}}]
    return {
        "tls_params": TLS13,
        "alpn_protocols": alpn,
        "tls_certificates": [
            {
                "certificate_chain": {"filename": os.path.join(certs, "cert-chain.pem")},
                "private_key": {"filename": os.path.join(certs, "key.pem")},
            }
        ],
        "validation_context": validation,
    }


def _edownstream(certs, alpn):
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": _common_tls(certs, alpn),
            "require_client_certificate": True,
            **({} if RESUMPTION["on"] else {"disable_stateless_session_resumption": True,
                                            "disable_stateful_session_resumption": True}),
        },
    }


def _eupstream(certs, port, alpn):
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _common_tls(certs, alpn, SERVER_ID),
            "sni": sni(port),
            # TLS 1.3 tickets are single-use on both clients: rustls keeps up to 8 per server
            # (its client default), Envoy 1 (`max_session_keys` default), so that with
            # connections in parallel most of Envoy's find none and do a full handshake. 8 here
            # makes resumption equally available to both.
            "max_session_keys": 8 if RESUMPTION["on"] else 0,
        },
    }


def envoy(server_ip, http_port, tcp_port, conn_port, certs=None):
    """A static bootstrap doing what `rustmesh()` configures. With `certs` (the pod's
    directory: cert-chain.pem, key.pem, root-cert.pem), mutual TLS as Istio's sidecars do it:
    inbound, `tls_inspector` and mTLS chains ahead of the plain ones; outbound, TLS to the
    server with Istio's SNI and ALPN. Istio sets the HTTP ALPN per request with its `istio.alpn`
    filter, which upstream Envoy lacks: here the outbound HTTP listener has one chain (and
    cluster) per HTTP version instead, offering rustmesh's lists (`istio-http/1.1, istio,
    http/1.1` or `istio-h2, istio, h2`)."""
    mtls = certs is not None
    out_http = f"outbound|{http_port}||{SERVICE}"
    out_tcp = f"outbound|{tcp_port}||{SERVICE}"
    out_conn = f"outbound|{conn_port}||{SERVICE}"
    in_http = f"inbound|{http_port}||"
    in_tcp = f"inbound|{tcp_port}||"
    in_conn = f"inbound|{conn_port}||"
    tls_chains = []
    if mtls:
        tls_chains = [
            {
                "filter_chain_match": {"destination_port": http_port, "transport_protocol": "tls",
                                       "application_protocols": ALPN_HTTP},
                "transport_socket": _edownstream(certs, ["h2", "http/1.1"]),
                "filters": [_ehcm(f"inbound_0.0.0.0_{http_port}", in_http)],
            }
        ] + [
            {
                "filter_chain_match": {"destination_port": port, "transport_protocol": "tls",
                                       "application_protocols": ALPN_ALL},
                "transport_socket": _edownstream(certs, ALPN_TCP),
                "filters": [_etcp(cluster)],
            }
            for port, cluster in ((tcp_port, in_tcp), (conn_port, in_conn))
        ]
    if mtls:
        out_http_chains = [
            {
                "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": [app]},
                "filters": [_ehcm(f"outbound_{server_ip}_{http_port}", f"{out_http}-{app}")],
            }
            for app in HTTP_APPS
        ]
    else:
        out_http_chains = [
            {
                "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": HTTP_APPS},
                "filters": [_ehcm(f"outbound_{server_ip}_{http_port}", out_http)],
            }
        ]
    listeners = [
        {
            "name": "virtualOutbound",
            "address": _sa("0.0.0.0", 15001),
            "traffic_direction": "OUTBOUND",
            "use_original_dst": True,
            "listener_filters": [ORIGINAL_DST],
            "filter_chains": [{"filter_chain_match": {"destination_port": 15001}, "filters": [_etcp("BlackHoleCluster")]}],
            "default_filter_chain": {"filters": [_etcp("PassthroughCluster")]},
        },
        {
            "name": "virtualInbound",
            "address": _sa("0.0.0.0", 15006),
            "traffic_direction": "INBOUND",
            "listener_filters": [ORIGINAL_DST, TLS_INSPECTOR, HTTP_INSPECTOR] if mtls else [ORIGINAL_DST, HTTP_INSPECTOR],
            "listener_filters_timeout": "0.1s",
            "continue_on_listener_filters_timeout": True,
            "filter_chains": [
                {"filter_chain_match": {"destination_port": 15006}, "filters": [_etcp("BlackHoleCluster")]},
                *tls_chains,
                {
                    "filter_chain_match": {
                        "destination_port": http_port,
                        "transport_protocol": "raw_buffer",
                        "application_protocols": HTTP_APPS,
                    },
                    "filters": [_ehcm(f"inbound_0.0.0.0_{http_port}", in_http)],
                },
                {
                    "filter_chain_match": {"destination_port": http_port, "transport_protocol": "raw_buffer"},
                    "filters": [_etcp(in_http)],
                },
                {"filter_chain_match": {"destination_port": tcp_port}, "filters": [_etcp(in_tcp)]},
                {"filter_chain_match": {"destination_port": conn_port}, "filters": [_etcp(in_conn)]},
            ],
            "default_filter_chain": {"filters": [_etcp("InboundPassthroughClusterIpv4")]},
        },
        {
            "name": f"{server_ip}_{http_port}",
            "address": _sa(server_ip, http_port),
            "traffic_direction": "OUTBOUND",
            "bind_to_port": False,
            "listener_filters": [HTTP_INSPECTOR],
            "listener_filters_timeout": "0.1s",
            "continue_on_listener_filters_timeout": True,
            "filter_chains": out_http_chains,
            "default_filter_chain": {"filters": [_etcp(out_http)]},
        },
        {
            "name": f"{server_ip}_{tcp_port}",
            "address": _sa(server_ip, tcp_port),
            "traffic_direction": "OUTBOUND",
            "bind_to_port": False,
            "filter_chains": [{"filters": [_etcp(out_tcp)]}],
        },
        {
            "name": f"{server_ip}_{conn_port}",
            "address": _sa(server_ip, conn_port),
            "traffic_direction": "OUTBOUND",
            "bind_to_port": False,
            "filter_chains": [{"filters": [_etcp(out_conn)]}],
        },
    ]
    big = 4294967295
    breakers = {
        "thresholds": [
            {"max_connections": big, "max_pending_requests": big, "max_requests": big, "max_retries": big}
        ]
    }
    http_opts = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": T + "upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
        }
    }

    def static(name, ip, port, http, lb="ROUND_ROBIN", alpn=None):
        c = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "10s",
            "lb_policy": lb,
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sa(ip, port)}}]}],
            },
            "circuit_breakers": breakers,
        }
        if http:
            c["typed_extension_protocol_options"] = http_opts
        if alpn:
            c["transport_socket"] = _eupstream(certs, port, alpn)
        return c

    alpn_h1 = ["istio-http/1.1", "istio", "http/1.1"]
    alpn_h2 = ["istio-h2", "istio", "h2"]
    if mtls:
        out = [
            static(f"{out_http}-http/1.1", server_ip, http_port, True, "LEAST_REQUEST", alpn_h1),
            static(f"{out_http}-h2c", server_ip, http_port, True, "LEAST_REQUEST", alpn_h2),
            # the HTTP port's opaque fallback (default chain)
            static(out_http, server_ip, http_port, False, "LEAST_REQUEST", ALPN_TCP),
        ]
    else:
        out = [static(out_http, server_ip, http_port, True, "LEAST_REQUEST")]

    clusters = [
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED"},
        {
            "name": "InboundPassthroughClusterIpv4",
            "type": "ORIGINAL_DST",
            "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED",
            "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        },
        static(in_http, "127.0.0.1", http_port, True),
        static(in_tcp, "127.0.0.1", tcp_port, False),
        static(in_conn, "127.0.0.1", conn_port, False),
        *out,
        static(out_tcp, server_ip, tcp_port, False, "LEAST_REQUEST", ALPN_TCP if mtls else None),
        static(out_conn, server_ip, conn_port, False, "LEAST_REQUEST", ALPN_TCP if mtls else None),
    ]
    return {
        "admin": {"address": _sa("127.0.0.1", 15000)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


# ---- authorization: N ALLOW rules on the server's inbound side (bench/run --authz) -----------
#
# One ALLOW policy `bench/allow` of `n` rules, as a user would write it: rule 0 allows the TCP
# ports (so the opaque and iperf ports keep working: an ALLOW policy denies what no rule allows),
# rules 1..n-2 allow GET on paths the benchmark never asks for, and the last rule allows GET /,
# the benchmark's request. Envoy gets what Istio generates for that policy: an HTTP RBAC filter
# (one policy `ns[bench]-policy[allow]-rule[i]` per rule) ahead of the router on the inbound
# HTTP chains, and a network RBAC filter on the inbound TCP chains holding only the rules without
# HTTP-only fields (Istio drops those from an ALLOW policy's TCP filter).


def authz_rules(n, tcp_ports):
    """The policy's rules in the rustmesh ProxyConfig's shape (`xds::authz::AuthzRule`)."""
    rules = [{"to": [{"ports": list(tcp_ports)}]}]
    rules += [{"to": [{"methods": ["GET"], "paths": [f"/api/items/{i}"]}]} for i in range(1, n - 1)]
    rules.append({"to": [{"methods": ["GET"], "paths": ["/"]}]})
    return rules[:max(n, 1)]


def with_authz_rustmesh(doc, n, tcp_ports):
    doc = json.loads(json.dumps(doc))
    doc["authorization"] = {"policies": [{"name": "bench/allow", "action": "ALLOW",
                                          "rules": authz_rules(n, tcp_ports)}]}
    doc["versionInfo"] = f"bench-authz-{n}"
    return doc


def _envoy_policy(rule):
    perms = []
    for op in rule.get("to", []):
        ands = []
        if "ports" in op:
            ands.append({"or_rules": {"rules": [{"destination_port": p} for p in op["ports"]]}})
        if "methods" in op:
            ands.append({"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": m}}}
                                                for m in op["methods"]]}})
        if "paths" in op:
            ands.append({"or_rules": {"rules": [{"url_path": {"path": {"exact": p}}} for p in op["paths"]]}})
        perms.append({"and_rules": {"rules": ands}})
    return {"permissions": perms, "principals": [{"and_ids": {"ids": [{"any": True}]}}]}


def _envoy_rbac(n, tcp_ports, http):
    policies = {}
    for i, rule in enumerate(authz_rules(n, tcp_ports)):
        http_only = any("methods" in op or "paths" in op for op in rule.get("to", []))
        if http or not http_only:
            policies[f"ns[bench]-policy[allow]-rule[{i}]"] = _envoy_policy(rule)
    rules = {"action": "ALLOW", "policies": policies}
    if http:
        return {"name": "envoy.filters.http.rbac",
                "typed_config": {"@type": T + "filters.http.rbac.v3.RBAC", "rules": rules}}
    return {"name": "envoy.filters.network.rbac",
            "typed_config": {"@type": T + "filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.", "rules": rules}}


def with_authz_envoy(doc, n, tcp_ports):
    """`doc` (an `envoy()` bootstrap) with the RBAC filters on its inbound listener's chains."""
    doc = json.loads(json.dumps(doc))
    for listener in doc["static_resources"]["listeners"]:
        if listener["name"] != "virtualInbound":
            continue
        chains = listener["filter_chains"] + [listener["default_filter_chain"]]
        for chain in chains:
            filters = chain["filters"]
            if chain.get("filter_chain_match", {}).get("destination_port") == 15006:
                continue  # the loop guard's blackhole
            hcm = filters[0]["typed_config"]
            if "http_filters" in hcm:
                hcm["http_filters"].insert(0, _envoy_rbac(n, tcp_ports, http=True))
            else:
                filters.insert(0, _envoy_rbac(n, tcp_ports, http=False))
    return doc


# ---- access logs: Istio's, on every sidecar's HTTP and TCP filters (bench/run --access-log) ----
#
# What `meshConfig.accessLogFile: /dev/stdout` with the default encoding (TEXT) and format
# renders: every HTTP connection manager and TCP proxy logs one line per request or connection to
# the sidecar's standard output, in Istio's default TEXT format. bench/run sends both proxies'
# standard output to a file (the sidecar's log in its work directory).

# xds/src/access_log.rs ISTIO_DEFAULT_TEXT_FORMAT (Istio's EnvoyTextLogFormat), byte for byte
ISTIO_DEFAULT_TEXT_FORMAT = (
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% "
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
LOGGED = ("envoy.filters.network.http_connection_manager", "envoy.filters.network.tcp_proxy")


def _chains(listener, chains, default):
    return listener.get(chains, []) + ([listener[default]] if default in listener else [])


def with_access_log_rustmesh(doc):
    """`doc` (a `rustmesh()` ProxyConfig) with `accessLog` on every HTTP connection manager and
    TCP proxy (`xds::access_log::AccessLog`: encoding TEXT and the format left to the default,
    Istio's TEXT format)."""
    doc = json.loads(json.dumps(doc))
    for listener in doc["listeners"]:
        for chain in _chains(listener, "filterChains", "defaultFilterChain"):
            for f in chain["filters"]:
                if f["name"] in LOGGED:
                    f["typedConfig"]["accessLog"] = [{"path": "/dev/stdout"}]
    doc["versionInfo"] = "bench-alog"
    return doc


def with_access_log_envoy(doc):
    """`doc` (an `envoy()` bootstrap) with Istio's file access log on every HTTP connection
    manager and TCP proxy: /dev/stdout, Istio's default TEXT format."""
    doc = json.loads(json.dumps(doc))
    log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": T + "access_loggers.file.v3.FileAccessLog",
            "path": "/dev/stdout",
            "log_format": {"text_format_source": {"inline_string": ISTIO_DEFAULT_TEXT_FORMAT}},
        },
    }
    for listener in doc["static_resources"]["listeners"]:
        for chain in _chains(listener, "filter_chains", "default_filter_chain"):
            for f in chain["filters"]:
                if f["name"] in LOGGED:
                    f["typed_config"]["access_log"] = [log]
    return doc


# ---- tracing: Istio's Zipkin provider on every sidecar's HTTP connection managers (bench/run --tracing) ----
#
# What a mesh with `extensionProviders: [{name: zipkin, zipkin: {service: .., port: 9411}}]`,
# `defaultProviders.tracing: [zipkin]` and a sampling of P % renders for a sidecar: every HTTP
# connection manager (inbound and outbound) traces, sampling P % of the requests that arrive
# without a decision (the server's sidecar follows the client's, propagated in B3 headers),
# tagging each span with Istio's four literal tags of the pod, and every route is named as Istio
# names it (`decorator.operation: <service host>:<port>/*`). Spans go to a Zipkin v2 JSON
# collector at `collector` (an (ip, port) pair; bench/run starts `testapp collector --zipkin`).
# The TCP proxies are untouched (no spans for opaque TCP, as in Istio).

HCM = "envoy.filters.network.http_connection_manager"


def tracing_tags(service, namespace="bench", revision="latest"):
    """Istio's custom tags of a sidecar's spans (the pod's canonical service and revision, its
    namespace, the mesh id), as literals: (tag, value) pairs."""
    return [("istio.canonical_revision", revision), ("istio.canonical_service", service),
            ("istio.mesh_id", TRUST_DOMAIN), ("istio.namespace", namespace)]


def _operation(cluster):
    """Istio's span name of a route to `cluster` (`outbound|9080||host` or `inbound|9080||`):
    the service's host and the port, `server.bench.svc.cluster.local:9080/*`."""
    return f"{SERVICE}:{cluster.split('|')[1]}/*"


def with_tracing_rustmesh(doc, percent, collector, service="client", namespace="bench"):
    """`doc` (a `rustmesh()` ProxyConfig) with `tracing` (`xds::trace::Tracing`: a Zipkin provider
    at `collector`, `randomSampling` `percent`, Istio's literal tags of the pod `service`.`namespace`)
    on every HTTP connection manager, and a `decorator` on every route. The span's service name
    (`<canonical service>.<namespace>`) comes from the pod's labels and POD_NAMESPACE, as in a pod:
    bench/run gives them to the sidecar."""
    doc = json.loads(json.dumps(doc))
    host, port = collector
    tracing = {
        "provider": {"name": "zipkin", "protocol": "zipkin", "service": host, "port": port},
        "randomSampling": float(percent),
        "customTags": [{"tag": t, "literal": {"value": v}} for t, v in tracing_tags(service, namespace)],
    }
    n = 0
    for listener in doc["listeners"]:
        for chain in _chains(listener, "filterChains", "defaultFilterChain"):
            for f in chain["filters"]:
                if f["name"] != HCM:
                    continue
                hcm = f["typedConfig"]
                hcm["tracing"] = json.loads(json.dumps(tracing))
                for vh in hcm["routeConfig"]["virtualHosts"]:
                    for route in vh["routes"]:
                        route["decorator"] = {"operation": _operation(route["route"]["cluster"])}
                n += 1
    assert n, "no HTTP connection manager to trace"
    doc["versionInfo"] = f"bench-trace-{percent:g}"
    return doc


def with_tracing_envoy(doc, percent, collector, service="client", namespace="bench"):
    """`doc` (an `envoy()` bootstrap) with Istio's tracing for a Zipkin provider on every HTTP
    connection manager (random_sampling `percent`, client and overall sampling 100, Istio's literal
    tags, `envoy.tracers.zipkin` with Istio's settings: HTTP_JSON to `/api/v2/spans`, 128-bit trace
    ids, no shared span context), a `decorator` on every route, and the `zipkin` cluster to
    `collector`. Envoy's span service name is its node's cluster (Istio's `<canonical
    service>.<namespace>`): bench/run passes `--service-cluster`."""
    doc = json.loads(json.dumps(doc))
    host, port = collector
    tracing = {
        "client_sampling": {"value": 100},
        "random_sampling": {"value": float(percent)},
        "overall_sampling": {"value": 100},
        "custom_tags": [{"tag": t, "literal": {"value": v}} for t, v in tracing_tags(service, namespace)],
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_id_128bit": True,
                "shared_span_context": False,
            },
        },
    }
    n = 0
    for listener in doc["static_resources"]["listeners"]:
        for chain in _chains(listener, "filter_chains", "default_filter_chain"):
            for f in chain["filters"]:
                if f["name"] != HCM:
                    continue
                hcm = f["typed_config"]
                hcm["tracing"] = json.loads(json.dumps(tracing))
                for vh in hcm["route_config"]["virtual_hosts"]:
                    for route in vh["routes"]:
                        route["decorator"] = {"operation": _operation(route["route"]["cluster"])}
                n += 1
    assert n, "no HTTP connection manager to trace"
    doc["static_resources"]["clusters"].append({
        "name": "zipkin",
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": "zipkin",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sa(host, port)}}]}],
        },
    })
    return doc


# ---- ingress gateway: one Gateway-equivalent configuration, both proxies (bench/run --ingress) ----
#
# What the operator renders for a bookinfo-gateway style scope (operator/src/render/gateway.rs):
# a Gateway with an HTTP server on port 80 (the gateway Service's targetPort 8080) and an HTTPS
# server on 443 (targetPort 8443, `tls.mode: SIMPLE`) for one host, and a VirtualService bound to
# it sending `/` to the server's Service on 9080. Per port one listener `0.0.0.0_<targetPort>`
# bound to the port (no original destination, OUTBOUND); the HTTP one's connection manager on
# route table `http.8080`, the HTTPS one's chain matched by SNI (the host) terminating TLS, on
# Istio's `https.443.https.<gateway>.<namespace>` table; one virtual host `<host>:<server port>`
# with Istio's gateway domains (`host`, `host:*`); the route to the cluster
# `outbound|9080||<service>`, here STATIC at the server's address (the operator's is EDS with one
# endpoint: the same address). Envoy gets the same in a static bootstrap, plus the
# `tls_inspector` listener filter its SNI match needs (Istio adds it to such listeners).

GATEWAY = ("bookinfo-gateway", "bench")  # the Gateway's name and namespace
GW_HTTP, GW_HTTPS = (80, 8080), (443, 8443)  # (server port, targetPort = listener port)


def gateway_domains(host, port):
    """Istio's gateway virtual host domains for a non-wildcard host (operator's `domains`)."""
    return [host, f"{host}:*"]


def gateway_routes(host, cluster):
    """The route tables: (name, server port) pairs and their one virtual host each."""
    tables = []
    for name, port in ((f"http.{GW_HTTP[1]}", GW_HTTP[0]),
                       (f"https.{GW_HTTPS[0]}.https.{GATEWAY[0]}.{GATEWAY[1]}", GW_HTTPS[0])):
        tables.append((name, {"name": f"{host}:{port}", "domains": gateway_domains(host, port),
                              "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}))
    return tables


def file_cert_name(cert_dir):
    """Istio's SDS name of a certificate from files (`file-cert:<chain>~<key>`)."""
    return f"file-cert:{os.path.join(cert_dir, 'cert-chain.pem')}~{os.path.join(cert_dir, 'key.pem')}"


def rustmesh_gateway(server_ip, server_port, host, cert_dir=None):
    """The router's ProxyConfig. With `cert_dir` (cert-chain.pem, key.pem: the host's
    certificate), the HTTPS listener too, its credential named by the SDS name of files
    (`file-cert:`), as a gateway credential is named in the chain's DownstreamTlsContext
    (`rustmesh_xds::tls::credential_downstream`'s shape)."""
    cluster = f"outbound|{server_port}||{SERVICE}"
    tables = gateway_routes(host, cluster)

    def hcm(port, table):
        return [{"name": HCM, "typedConfig": {"statPrefix": f"outbound_0.0.0.0_{port}",
                                              "rds": {"routeConfigName": table}}}]

    def listener(port, chain):
        return {"name": f"0.0.0.0_{port}", "address": _addr("0.0.0.0", port), "trafficDirection": "OUTBOUND",
                "useOriginalDst": False, "bindToPort": True, "filterChains": [chain]}

    listeners = [listener(GW_HTTP[1], {"filters": hcm(GW_HTTP[1], tables[0][0])})]
    routes = [{"name": tables[0][0], "virtualHosts": [tables[0][1]]}]
    if cert_dir:
        listeners.append(listener(GW_HTTPS[1], {
            "filterChainMatch": {"serverNames": [host], "transportProtocol": "tls"},
            "transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
                "commonTlsContext": {"alpnProtocols": ["h2", "http/1.1"],
                                     "tlsCertificateSdsSecretConfigs": [{"name": file_cert_name(cert_dir)}]},
                "requireClientCertificate": False}},
            "filters": hcm(GW_HTTPS[1], tables[1][0]),
        }))
        routes.append({"name": tables[1][0], "virtualHosts": [tables[1][1]]})
    big = 4294967295
    return {
        "versionInfo": "bench-ingress-1",
        "listeners": listeners,
        "routes": routes,
        "clusters": [{
            "name": cluster, "type": "STATIC", "connectTimeout": "10s", "lbPolicy": "ROUND_ROBIN",
            "loadAssignment": {"clusterName": cluster,
                               "endpoints": [{"lbEndpoints": [{"endpoint": {"address": _addr(server_ip, server_port)}}]}]},
            "circuitBreakers": {"thresholds": [{"maxConnections": big, "maxPendingRequests": big,
                                                "maxRequests": big, "maxRetries": big}]},
        }],
    }


def envoy_gateway(server_ip, server_port, host, cert_dir):
    """A static bootstrap doing what `rustmesh_gateway()` configures, the HTTPS listener's
    certificate from files (`tls_certificates`)."""
    cluster = f"outbound|{server_port}||{SERVICE}"
    tables = gateway_routes(host, cluster)

    def hcm(port, table, vhost):
        return {"name": HCM, "typed_config": {
            "@type": T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": f"outbound_0.0.0.0_{port}",
            "codec_type": "AUTO",
            "route_config": {"name": table, "virtual_hosts": [vhost]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": T + "filters.http.router.v3.Router"}}],
        }}

    https_chain = {
        "filter_chain_match": {"server_names": [host], "transport_protocol": "tls"},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": T + "transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{"certificate_chain": {"filename": os.path.join(cert_dir, "cert-chain.pem")},
                                      "private_key": {"filename": os.path.join(cert_dir, "key.pem")}}],
            },
            "require_client_certificate": False}},
        "filters": [hcm(GW_HTTPS[1], *tables[1])],
    }
    listeners = [
        {"name": f"0.0.0.0_{GW_HTTP[1]}", "address": _sa("0.0.0.0", GW_HTTP[1]), "traffic_direction": "OUTBOUND",
         "filter_chains": [{"filters": [hcm(GW_HTTP[1], *tables[0])]}]},
        {"name": f"0.0.0.0_{GW_HTTPS[1]}", "address": _sa("0.0.0.0", GW_HTTPS[1]), "traffic_direction": "OUTBOUND",
         "listener_filters": [TLS_INSPECTOR], "filter_chains": [https_chain]},
    ]
    big = 4294967295
    return {
        "admin": {"address": _sa("127.0.0.1", 15000)},
        "static_resources": {"listeners": listeners, "clusters": [{
            "name": cluster, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": cluster,
                                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sa(server_ip, server_port)}}]}]},
            "circuit_breakers": {"thresholds": [{"max_connections": big, "max_pending_requests": big,
                                                 "max_requests": big, "max_retries": big}]},
        }]},
    }
