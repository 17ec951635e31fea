"""Sidecar configurations for the benchmark job, one per contestant.

Both documents do the same job, in the same shape as Istio's sidecars: a 15001 virtual outbound
listener that hands connections to a per-destination listener by original destination, a 15006
virtual inbound listener whose chains match the destination port, an HTTP connection manager with
one route (HTTP ports) or a tcp_proxy (the TCP port), and the built-in passthrough / blackhole
clusters. One document serves both sides: the client's sidecar uses the outbound half, the
server's the inbound half. No access log on either.
"""

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


def rustmesh(server_ip, http_port, tcp_port):
    out_http = f"outbound|{http_port}||{SERVICE}"
    out_tcp = f"outbound|{tcp_port}||{SERVICE}"
    in_http = f"inbound|{http_port}||"
    in_tcp = f"inbound|{tcp_port}||"
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

    def eds(name):
        return {
            "name": name,
            "type": "EDS",
            "connectTimeout": "10s",
            "lbPolicy": "LEAST_REQUEST",
            "edsClusterConfig": {"serviceName": name},
            "circuitBreakers": breakers,
            "metadata": {"services": [{"host": SERVICE, "name": "server", "namespace": "bench"}]},
        }

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
        eds(out_http),
        eds(out_tcp),
    ]
    endpoints = [
        {
            "clusterName": name,
            "endpoints": [{"lbEndpoints": [{"endpoint": {"address": _addr(server_ip, port)}}]}],
        }
        for name, port in ((out_http, http_port), (out_tcp, tcp_port))
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


def envoy(server_ip, http_port, tcp_port):
    out_http = f"outbound|{http_port}||{SERVICE}"
    out_tcp = f"outbound|{tcp_port}||{SERVICE}"
    in_http = f"inbound|{http_port}||"
    in_tcp = f"inbound|{tcp_port}||"
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
            "listener_filters": [ORIGINAL_DST, HTTP_INSPECTOR],
            "listener_filters_timeout": "0.1s",
            "continue_on_listener_filters_timeout": True,
            "filter_chains": [
                {"filter_chain_match": {"destination_port": 15006}, "filters": [_etcp("BlackHoleCluster")]},
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
            "filter_chains": [
                {
                    "filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": HTTP_APPS},
                    "filters": [_ehcm(f"outbound_{server_ip}_{http_port}", out_http)],
                }
            ],
            "default_filter_chain": {"filters": [_etcp(out_http)]},
        },
        {
            "name": f"{server_ip}_{tcp_port}",
            "address": _sa(server_ip, tcp_port),
            "traffic_direction": "OUTBOUND",
            "bind_to_port": False,
            "filter_chains": [{"filters": [_etcp(out_tcp)]}],
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

    def static(name, ip, port, http, lb="ROUND_ROBIN"):
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
        return c

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
        static(out_http, server_ip, http_port, True, "LEAST_REQUEST"),
        static(out_tcp, server_ip, tcp_port, False, "LEAST_REQUEST"),
    ]
    return {
        "admin": {"address": _sa("127.0.0.1", 15000)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
