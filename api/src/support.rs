//! Which fields of the Istio API rustmesh implements, field by field, and the reports for those
//! it does not: the project's rule is that a field rustmesh does not implement is refused or
//! reported with a message naming it, never accepted and silently ignored.
//!
//! Every field of every kind's `spec` (as its CRD schema lists them) is in [`table`]:
//!
//! - [`Support::Rendered`]: rendered into the proxy configuration (or used by the operator), with
//!   where;
//! - [`Support::Warned`]: accepted and ignored, with a warning naming the field in the object's
//!   status (`validationMessages`, and the `Accepted` condition's message). For fields whose
//!   absence of effect is harmless: tuning (keepalives, warm-up, stats prefixes), things rustmesh
//!   has no notion of (localities);
//! - [`Support::Refused`]: the object is refused (`Accepted=False`, reason `Invalid`, naming the
//!   field; an update's last accepted version keeps serving), as [`crate::validate::Validate`]
//!   reports it. For fields whose being ignored would change where traffic goes, or its
//!   security, in a way the user would not expect.
//!
//! `tests/field_support.rs` walks every field of the CRD schemas and fails on one that is in
//! neither list, so a new field can never be silently ignored; it also feeds an object with each
//! reported field through validation and checks the finding names it.
//!
//! Paths are the schema's: `spec.http[].match[].headers{}.exact` (`[]` an array's items, `{}` a
//! map's values). A path starting with `**.` matches at any depth, for DestinationRule's traffic
//! policy, which appears at the top, per port, per subset and per subset port.

use crate::FieldError;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What rustmesh does with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Rendered (or used): where, for the reader of the table.
    Rendered(&'static str),
    /// Accepted and ignored with a warning naming the field: why it is not implemented.
    Warned(&'static str),
    /// The object is refused, naming the field: why.
    Refused(&'static str),
    /// Reported (refused or warned, naming the field) by the check named, which knows when the
    /// field matters (the walker here does not report it again).
    ReportedBy(&'static str),
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The field's path (or, with `leaves`, the parent of the fields listed).
    pub path: &'static str,
    /// For a rendered entry: the leaf fields under `path` it covers (dotted, relative); empty
    /// when `path` is itself a leaf. A reported entry covers everything under `path`.
    pub leaves: &'static [&'static str],
    pub support: Support,
    /// For a reported entry: values (as JSON text) that are what rustmesh does anyway, and so
    /// are neither refused nor warned about (`captureMode: IPTABLES`).
    pub harmless: &'static [&'static str],
    /// For a reported entry: a value of the field, as JSON, that the tests put in an object to
    /// prove it is reported (for [`Support::ReportedBy`], a value of the field's parent, since
    /// the check depends on its siblings).
    pub example: &'static str,
}

const fn rendered(path: &'static str, leaves: &'static [&'static str], at: &'static str) -> Entry {
    Entry {
        path,
        leaves,
        support: Support::Rendered(at),
        harmless: &[],
        example: "",
    }
}

const fn warned(path: &'static str, why: &'static str, example: &'static str) -> Entry {
    Entry {
        path,
        leaves: &[],
        support: Support::Warned(why),
        harmless: &[],
        example,
    }
}

const fn refused(path: &'static str, why: &'static str, example: &'static str) -> Entry {
    Entry {
        path,
        leaves: &[],
        support: Support::Refused(why),
        harmless: &[],
        example,
    }
}

const VIRTUAL_SERVICE: &[Entry] = &[
    rendered(
        "spec.hosts",
        &[],
        "render/routes.rs: the virtual hosts' domains",
    ),
    rendered(
        "spec.gateways",
        &[],
        "render/mod.rs: rendered for sidecars when empty or holding `mesh`; other names are gateways, as in Istio",
    ),
    rendered("spec.exportTo", &[], "operator registry::exported"),
    rendered(
        "spec.http[]",
        &["name", "timeout"],
        "render/routes.rs translate: route name, RouteAction.timeout",
    ),
    rendered(
        "spec.http[].match[]",
        &[
            "authority.exact",
            "authority.prefix",
            "authority.regex",
            "gateways",
            "headers{}.exact",
            "headers{}.prefix",
            "headers{}.regex",
            "ignoreUriCase",
            "method.exact",
            "method.prefix",
            "method.regex",
            "name",
            "port",
            "queryParams{}.exact",
            "queryParams{}.prefix",
            "queryParams{}.regex",
            "scheme.exact",
            "scheme.prefix",
            "scheme.regex",
            "sourceLabels",
            "sourceNamespace",
            "uri.exact",
            "uri.prefix",
            "uri.regex",
            "withoutHeaders{}.exact",
            "withoutHeaders{}.prefix",
            "withoutHeaders{}.regex",
        ],
        "render/routes.rs route_match and match_applies; the proxy's route/matching.rs",
    ),
    warned(
        "spec.http[].match[].statPrefix",
        "per-route statistics prefixes are not implemented; the route's stats are not split out",
        r#""reviews-v1""#,
    ),
    rendered(
        "spec.http[].route[]",
        &[
            "destination.host",
            "destination.port.number",
            "destination.subset",
            "weight",
            "headers.request.add",
            "headers.request.remove",
            "headers.request.set",
            "headers.response.add",
            "headers.response.remove",
            "headers.response.set",
        ],
        "render/routes.rs translate: cluster / weightedClusters with their header changes",
    ),
    rendered(
        "spec.http[].redirect",
        &["authority", "port", "redirectCode", "scheme", "uri"],
        "render/routes.rs translate: RedirectAction",
    ),
    refused(
        "spec.http[].redirect.derivePort",
        "derivePort is not implemented: give the port, or leave both out (the request's port is \
         kept, or dropped when the scheme or host changes)",
        r#""FROM_REQUEST_PORT""#,
    ),
    rendered(
        "spec.http[].directResponse",
        &["status", "body.string", "body.bytes"],
        "render/routes.rs translate: DirectResponseAction",
    ),
    rendered(
        "spec.http[].rewrite",
        &[
            "authority",
            "uri",
            "uriRegexRewrite.match",
            "uriRegexRewrite.rewrite",
        ],
        "render/routes.rs translate: prefixRewrite, regexRewrite, hostRewriteLiteral",
    ),
    rendered(
        "spec.http[].retries",
        &["attempts", "perTryTimeout", "retryOn"],
        "render/routes.rs retry_policy",
    ),
    warned(
        "spec.http[].retries.retryRemoteLocalities",
        "rustmesh has no localities: retries go to any endpoint of the cluster",
        "true",
    ),
    rendered(
        "spec.http[].fault",
        &[
            "abort.grpcStatus",
            "abort.httpStatus",
            "abort.percentage.value",
            "delay.fixedDelay",
            "delay.percent",
            "delay.percentage.value",
        ],
        "render/routes.rs fault",
    ),
    refused(
        "spec.http[].fault.abort.http2Error",
        "HTTP/2 error aborts are not implemented: use httpStatus or grpcStatus",
        r#""REFUSED_STREAM""#,
    ),
    rendered(
        "spec.http[]",
        &[
            "mirror.host",
            "mirror.port.number",
            "mirror.subset",
            "mirrorPercent",
            "mirrorPercentage.value",
            "mirrors[].destination.host",
            "mirrors[].destination.port.number",
            "mirrors[].destination.subset",
            "mirrors[].percentage.value",
        ],
        "render/routes.rs translate: requestMirrorPolicies",
    ),
    rendered(
        "spec.http[].headers",
        &[
            "request.add",
            "request.remove",
            "request.set",
            "response.add",
            "response.remove",
            "response.set",
        ],
        "render/routes.rs header_ops",
    ),
    rendered(
        "spec.http[].corsPolicy",
        &[
            "allowCredentials",
            "allowHeaders",
            "allowMethods",
            "allowOrigin",
            "allowOrigins[].exact",
            "allowOrigins[].prefix",
            "allowOrigins[].regex",
            "exposeHeaders",
            "maxAge",
            "unmatchedPreflights",
        ],
        "render/routes.rs cors_policy: Route.cors, applied by the proxy's http/cors.rs",
    ),
    rendered(
        "spec.http[].delegate",
        &["name", "namespace"],
        "render/delegate.rs: the delegate VirtualService's http routes merged in at this \
         position, matches combined with this route's (Istio's mergeHTTPRoute); a missing, \
         invisible or invalid delegate is a warning on the root (validation.rs \
         delegate_findings)",
    ),
    rendered(
        "spec.tcp[].match[]",
        &[
            "destinationSubnets",
            "gateways",
            "port",
            "sourceLabels",
            "sourceNamespace",
        ],
        "render/mod.rs: which TCP route a listener's tcp_proxy uses (sourceLabels: chains \
         carrying them, kept by the proxies whose pod has them, tcp_rules_by_source)",
    ),
    rendered(
        "spec.tcp[].route[]",
        &[
            "destination.host",
            "destination.port.number",
            "destination.subset",
            "weight",
        ],
        "render/mod.rs: tcp_proxy cluster / weightedClusters",
    ),
    rendered(
        "spec.tls[].match[]",
        &[
            "sniHosts",
            "destinationSubnets",
            "gateways",
            "port",
            "sourceLabels",
            "sourceNamespace",
        ],
        "render/mod.rs tls_chains (sidecars: a chain per SNI on the service's TLS listener) and \
         render/gateway.rs passthrough_chains (gateways' PASSTHROUGH servers); sourceLabels \
         travel on the chain for the proxy to check against its pod's labels",
    ),
    rendered(
        "spec.tls[].route[]",
        &[
            "destination.host",
            "destination.port.number",
            "destination.subset",
            "weight",
        ],
        "render/mod.rs: the SNI chain's tcp_proxy cluster / weightedClusters",
    ),
];

/// The connection pool's fields, the same in a DestinationRule and a Sidecar.
const POOL_RENDERED_HTTP: [&str; 7] = [
    "h2UpgradePolicy",
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "idleTimeout",
    "maxRequestsPerConnection",
    "maxRetries",
    "useClientProtocol",
];

const DESTINATION_RULE: &[Entry] = &[
    rendered("spec.host", &[], "render/clusters.rs: the rule's clusters"),
    rendered("spec.exportTo", &[], "operator registry::exported"),
    rendered(
        "spec.workloadSelector.matchLabels",
        &[],
        "render/mod.rs: selector scopes",
    ),
    rendered(
        "spec.subsets[]",
        &["name", "labels"],
        "render/clusters.rs: a cluster per subset, its endpoints by labels",
    ),
    rendered(
        "**.portLevelSettings[].port.number",
        &[],
        "render/clusters.rs merged_policy",
    ),
    rendered(
        "**.connectionPool.http",
        &POOL_RENDERED_HTTP,
        "render/clusters.rs: circuitBreakers, commonHttpProtocolOptions, upstreamProtocol; \
         enforced in the proxy's pool/",
    ),
    warned(
        "**.connectionPool.http.maxConcurrentStreams",
        "not implemented: HTTP/2 connections to the destination take the streams the server allows",
        "100",
    ),
    rendered(
        "**.connectionPool.tcp",
        &["connectTimeout", "idleTimeout", "maxConnections"],
        "render/clusters.rs: connectTimeout, circuitBreakers.maxConnections; idleTimeout: \
         render/mod.rs tcp_idle_timeout, the tcp_proxy idleTimeout of the outbound TCP and TLS \
         chains to the host (unset: 1 h, 0s: none, as Istio)",
    ),
    warned(
        "**.connectionPool.tcp.maxConnectionDuration",
        "not implemented: upstream connections are not closed for their age",
        r#""1h""#,
    ),
    warned(
        "**.connectionPool.tcp.tcpKeepalive",
        "not implemented: upstream connections use the kernel's keepalive settings",
        r#"{"time": "7200s", "interval": "75s", "probes": 9}"#,
    ),
    rendered(
        "**.loadBalancer",
        &[
            "simple",
            "consistentHash.httpCookie.name",
            "consistentHash.httpCookie.path",
            "consistentHash.httpCookie.ttl",
            "consistentHash.httpHeaderName",
            "consistentHash.httpQueryParameterName",
            "consistentHash.maglev.tableSize",
            "consistentHash.minimumRingSize",
            "consistentHash.ringHash.minimumRingSize",
            "consistentHash.useSourceIp",
        ],
        "render/clusters.rs lb_policy, hash_lb_configs; render/routes.rs hash policies",
    ),
    warned(
        "**.loadBalancer.warmupDurationSecs",
        "slow start is not implemented: new endpoints get their full share at once",
        r#""10s""#,
    ),
    rendered(
        "**.outlierDetection",
        &[
            "baseEjectionTime",
            "consecutive5xxErrors",
            "consecutiveErrors",
            "consecutiveGatewayErrors",
            "interval",
            "maxEjectionPercent",
            "minHealthPercent",
        ],
        "render/clusters.rs outlier_detection; the proxy's cluster/outlier.rs",
    ),
    warned(
        "**.outlierDetection.splitExternalLocalOriginErrors",
        "not implemented: connect failures and resets count as 503s (as without it)",
        "true",
    ),
    warned(
        "**.outlierDetection.consecutiveLocalOriginFailures",
        "counts only with splitExternalLocalOriginErrors (as in Envoy), which is not implemented",
        "5",
    ),
    rendered(
        "**.tls",
        &[
            "caCertificates",
            "clientCertificate",
            "credentialName",
            "insecureSkipVerify",
            "mode",
            "privateKey",
            "sni",
            "subjectAltNames",
        ],
        "render/clusters.rs upstream_tls (operator validation.rs tls_findings for the combinations)",
    ),
    Entry {
        path: "**.tls.caCrl",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::checks::destination_rule_tls (the operator's tls findings): rendered \
             with SIMPLE and MUTUAL (render/clusters.rs upstream_tls: the validation context's \
             crl file, which the sidecar checks the server's chain against) as an absolute \
             path; refused as a relative path, beside a credentialName the sidecar uses (the \
             Secret's ca.crl or crl key is) and with ISTIO_MUTUAL; warned with \
             insecureSkipVerify; unused without TLS",
        ),
        harmless: &[],
        example: r#"{"mode": "SIMPLE", "caCrl": "etc/certs/crl.pem"}"#,
    },
];

const SIDECAR: &[Entry] = &[
    rendered(
        "spec.workloadSelector.labels",
        &[],
        "render/mod.rs: selector scopes",
    ),
    rendered(
        "spec.egress[]",
        &["hosts", "port.number", "port.protocol", "port.name"],
        "render/mod.rs egress_for, egress_selects (the port's name only names it, as in Istio)",
    ),
    warned(
        "spec.egress[].port.targetPort",
        "targetPort applies to ingress listeners only (as in Istio)",
        "8080",
    ),
    refused(
        "spec.egress[].bind",
        "binding listeners to an address is not implemented: the capture listeners serve every \
         address",
        r#""127.0.0.1""#,
    ),
    Entry {
        harmless: &[r#""DEFAULT""#, r#""IPTABLES""#],
        ..refused(
            "spec.egress[].captureMode",
            "captureMode NONE is not implemented (traffic is captured with iptables)",
            r#""NONE""#,
        )
    },
    rendered(
        "spec.ingress[]",
        &[
            "port.number",
            "port.protocol",
            "port.name",
            "port.targetPort",
            "defaultEndpoint",
        ],
        "render/mod.rs inbound ports",
    ),
    refused(
        "spec.ingress[].bind",
        "binding listeners to an address is not implemented: the capture listeners serve every \
         address",
        r#""0.0.0.0""#,
    ),
    Entry {
        harmless: &[r#""DEFAULT""#, r#""IPTABLES""#],
        ..refused(
            "spec.ingress[].captureMode",
            "captureMode NONE is not implemented (traffic is captured with iptables)",
            r#""NONE""#,
        )
    },
    refused(
        "spec.ingress[].tls",
        "terminating TLS with the workload's own certificates is not implemented: the port would \
         serve without it",
        r#"{"mode": "SIMPLE", "credentialName": "ratings-cert"}"#,
    ),
    warned(
        "spec.ingress[].connectionPool",
        "connection limits towards the application are not implemented: inbound requests are \
         not limited",
        r#"{"tcp": {"maxConnections": 10}}"#,
    ),
    warned(
        "spec.inboundConnectionPool",
        "connection limits towards the application are not implemented: inbound requests are \
         not limited",
        r#"{"http": {"http1MaxPendingRequests": 10}}"#,
    ),
    rendered(
        "spec.outboundTrafficPolicy.mode",
        &[],
        "render/routes.rs catch_all_vhost, render/mod.rs virtualOutbound",
    ),
    refused(
        "spec.outboundTrafficPolicy.egressProxy",
        "egressProxy is not implemented: traffic to unknown destinations would not go through it",
        r#"{"host": "egress.istio-system.svc.cluster.local"}"#,
    ),
];

const PEER_AUTHENTICATION: &[Entry] = &[
    rendered(
        "spec.selector.matchLabels",
        &[],
        "render/peer_authn.rs; the proxy's xds::peer_authn",
    ),
    rendered(
        "spec.mtls.mode",
        &[],
        "render/peer_authn.rs; the proxy's xds::peer_authn",
    ),
    rendered(
        "spec.portLevelMtls{}.mode",
        &[],
        "render/peer_authn.rs; the proxy's xds::peer_authn",
    ),
];

const AUTHORIZATION_POLICY: &[Entry] = &[
    rendered(
        "spec.selector.matchLabels",
        &[],
        "render/authz.rs: the policy's selector; the proxy's xds::authz selects by the pod's labels",
    ),
    rendered(
        "spec.action",
        &[],
        "render/authz.rs: ALLOW, DENY and AUDIT as themselves; CUSTOM as CUSTOM, which the proxy \
         denies (reported: see spec.provider)",
    ),
    Entry {
        path: "spec.provider",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::authorization_policy::AuthorizationPolicySpec::custom_unsupported \
             (the operator's authorization check): rustmesh has no external authorizer, so a \
             CUSTOM policy gets Accepted=False, reason Unsupported, naming spec.provider, and is \
             rendered so that the requests it matches are denied",
        ),
        harmless: &[],
        example: r#"{"action": "CUSTOM", "provider": {"name": "ext-authz"}, "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}"#,
    },
    refused(
        "spec.targetRef",
        "policies attached to Gateway API resources (gateways, waypoints) are not implemented: \
         rustmesh has neither, so the policy would apply to no sidecar",
        r#"{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}"#,
    ),
    refused(
        "spec.targetRefs",
        "policies attached to Gateway API resources (gateways, waypoints), Services or \
         ServiceEntries are not implemented: rustmesh has no waypoints, so the policy would apply \
         to no sidecar",
        r#"[{"kind": "Service", "group": "", "name": "reviews"}]"#,
    ),
    rendered(
        "spec.rules[]",
        &[
            "from[].source.principals",
            "from[].source.notPrincipals",
            "from[].source.requestPrincipals",
            "from[].source.notRequestPrincipals",
            "from[].source.namespaces",
            "from[].source.notNamespaces",
            "from[].source.ipBlocks",
            "from[].source.notIpBlocks",
            "from[].source.remoteIpBlocks",
            "from[].source.notRemoteIpBlocks",
            "to[].operation.hosts",
            "to[].operation.notHosts",
            "to[].operation.ports",
            "to[].operation.notPorts",
            "to[].operation.methods",
            "to[].operation.notMethods",
            "to[].operation.paths",
            "to[].operation.notPaths",
            "when[].key",
            "when[].values",
            "when[].notValues",
        ],
        "render/authz.rs: AuthzRule (from[].source and to[].operation flattened, ports as \
         numbers); enforced by the proxy's authz module",
    ),
];

const REQUEST_AUTHENTICATION: &[Entry] = &[
    rendered(
        "spec.selector.matchLabels",
        &[],
        "render/request_authn.rs: the policy's selector; the proxy's xds::request_authn selects \
         by the pod's labels",
    ),
    refused(
        "spec.targetRef",
        "policies attached to Gateway API resources (gateways, waypoints) are not implemented: \
         rustmesh has neither, so the policy would apply to no sidecar",
        r#"{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}"#,
    ),
    refused(
        "spec.targetRefs",
        "policies attached to Gateway API resources (gateways, waypoints), Services or \
         ServiceEntries are not implemented: rustmesh has no waypoints, so the policy would apply \
         to no sidecar",
        r#"[{"kind": "Service", "group": "", "name": "reviews"}]"#,
    ),
    rendered(
        "spec.jwtRules[]",
        &[
            "issuer",
            "audiences",
            "jwks",
            "jwksUri",
            "jwks_uri",
            "timeout",
            "fromHeaders[].name",
            "fromHeaders[].prefix",
            "fromParams",
            "fromCookies",
            "outputPayloadToHeader",
            "forwardOriginalToken",
            "outputClaimToHeaders[].header",
            "outputClaimToHeaders[].claim",
        ],
        "render/request_authn.rs: JwtRule; jwksUri/jwks_uri (or OpenID discovery of the issuer) \
         fetched by the operator's jwks module within `timeout` and passed inline as jwks, a set \
         that cannot be had as jwksError; verified by the proxy's jwt module",
    ),
];

const TELEMETRY: &[Entry] = &[
    rendered(
        "spec.selector.matchLabels",
        &[],
        "the Telemetry's selector: the operator gives each workload its most specific \
         Telemetry (workload, namespace, root namespace), selecting by the pod's labels",
    ),
    refused(
        "spec.targetRef",
        "policies attached to Gateway API resources (gateways, waypoints) are not implemented: \
         rustmesh has neither, so the policy would apply to no sidecar",
        r#"{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}"#,
    ),
    refused(
        "spec.targetRefs",
        "policies attached to Gateway API resources (gateways, waypoints), Services or \
         ServiceEntries are not implemented: rustmesh has no waypoints, so the policy would apply \
         to no sidecar",
        r#"[{"kind": "Service", "group": "", "name": "reviews"}]"#,
    ),
    rendered(
        "spec.tracing[]",
        &[
            "match.mode",
            "providers[].name",
            "randomSamplingPercentage",
            "disableSpanReporting",
            "customTags{}.literal.value",
            "customTags{}.environment.name",
            "customTags{}.environment.defaultValue",
            "customTags{}.header.name",
            "customTags{}.header.defaultValue",
            "useRequestIdForTraceSampling",
        ],
        "rustmesh_xds::trace::Tracing on the selected workloads' listeners of the mode (inbound: \
         SERVER, outbound: CLIENT): the provider from meshConfig's extensionProviders, sampling, \
         span reporting, custom tags",
    ),
    refused(
        "spec.tracing[].customTags{}.formatter",
        "span tags from access log command operators (formatter) are not implemented: the tag \
         would be missing from every span",
        r#"{"value": "%REQ(:path)%"}"#,
    ),
    Entry {
        harmless: &["true"],
        ..refused(
            "spec.tracing[].enableIstioTags",
            "spans always carry Istio's tags (istio.canonical_service, istio.namespace, ...): \
             turning them off is not implemented",
            "false",
        )
    },
    Entry {
        harmless: &["false"],
        ..refused(
            "spec.tracing[].disableContextPropagation",
            "the sidecar always propagates the trace context (B3, traceparent): turning it off \
             is not implemented, so the context would still reach the destination",
            "true",
        )
    },
    rendered(
        "spec.metrics[]",
        &[
            "providers[].name",
            "overrides[].match.metric",
            "overrides[].match.mode",
            "overrides[].disabled",
            "overrides[].tagOverrides{}.operation",
            "overrides[].tagOverrides{}.value",
        ],
        "the sidecar's Istio standard metrics (prometheus provider): an override's `disabled` \
         turns the metrics it matches off (or back on) for the listeners of its mode",
    ),
    refused(
        "spec.metrics[].overrides[].match.customMetric",
        "rustmesh has no custom metrics: the sidecar exports Istio's standard metrics only, so \
         the override would match nothing",
        r#""my_custom_metric""#,
    ),
    warned(
        "spec.metrics[].reportingInterval",
        "the sidecar's metrics are scraped, not pushed: there is no reporting interval",
        r#""15s""#,
    ),
    rendered(
        "spec.accessLogging[]",
        &[
            "match.mode",
            "providers[].name",
            "disabled",
            "filter.expression",
        ],
        "rustmesh_xds::access_log::AccessLog on the selected workloads' listeners of the mode \
         (inbound: SERVER, outbound: CLIENT), in the provider's file and format; `filter` in \
         the CEL subset of rustmesh_xds::cel (anything outside it is refused naming the field)",
    ),
];

/// The words every ServiceEntry refusal carries (docs/istio-fields.md says why each is not).
pub const SERVICE_ENTRY_NOT_RENDERED: &str = "not implemented by rustmesh";

/// ServiceEntry: the common egress cases are rendered (hosts, IP addresses, ports, location,
/// every resolution, IP and DNS-name endpoints with their ports and labels, exportTo); the rest is
/// refused naming the field, never accepted and silently ignored.
const SERVICE_ENTRY: &[Entry] = &[
    Entry {
        path: "spec.hosts",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::service_entry::ServiceEntrySpec::unsupported: operator registry.rs \
             renders one registry service per host (render/: clusters outbound|PORT||HOST, \
             listeners, virtual hosts, DNS entries); a wildcard host with resolution DNS or \
             DNS_ROUND_ROBIN is refused (no name to resolve), not implemented by rustmesh",
        ),
        harmless: &[],
        example: r#"{"hosts": ["*.example.com"], "resolution": "DNS", "endpoints": [{"address": "egress.example.com"}]}"#,
    },
    rendered(
        "spec.addresses",
        &[],
        "render/mod.rs: IP addresses are listeners ADDRESS_PORT and DNS answers; CIDR blocks \
         (NONE and STATIC) chains on 0.0.0.0_PORT matching the block (prefixRanges)",
    ),
    rendered(
        "spec.ports[]",
        &["name", "number", "protocol", "targetPort"],
        "operator registry.rs (protocol as Istio parses it; targetPort the endpoints' port when \
         their `ports` do not name it)",
    ),
    rendered(
        "spec.location",
        &[],
        "render/clusters.rs: MESH_EXTERNAL gets no auto mutual TLS; MESH_INTERNAL endpoints \
         labelled security.istio.io/tlsMode=istio do, as pods",
    ),
    rendered(
        "spec.resolution",
        &[],
        "render/clusters.rs: NONE an ORIGINAL_DST cluster, STATIC an EDS cluster, DNS a \
         STRICT_DNS cluster (every address of every name) and DNS_ROUND_ROBIN a LOGICAL_DNS \
         cluster (the first address of the one name) of the endpoints' names or IP addresses, \
         else of the host, which the sidecar resolves (proxy cluster/resolver.rs: A records, \
         at most 64 addresses a name); ServiceEntrySpec::unsupported refuses a wildcard host \
         (spec.hosts) and more than 64 endpoints (spec.endpoints) with these two",
    ),
    Entry {
        path: "spec.endpoints[].address",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::service_entry::ServiceEntrySpec::unsupported: IP addresses are \
             rendered (the cluster's endpoints), and DNS names with resolution DNS and \
             DNS_ROUND_ROBIN (resolved by the sidecar); unix:// sockets are refused, not \
             implemented by rustmesh",
        ),
        harmless: &[],
        example: r#"{"address": "unix:///var/run/api.sock"}"#,
    },
    rendered(
        "spec.endpoints[]",
        &["ports", "labels"],
        "render/clusters.rs load_assignment (dns_load_assignment for DNS resolutions): the \
         endpoint's port per entry port, labels for DestinationRule subsets and auto mutual \
         TLS",
    ),
    refused(
        "spec.endpoints[].network",
        "multi-network endpoints are not implemented by rustmesh",
        r#""network-2""#,
    ),
    refused(
        "spec.endpoints[].locality",
        "endpoint localities are not implemented by rustmesh",
        r#""us-east1/a""#,
    ),
    rendered(
        "spec.endpoints[].weight",
        &[],
        "render/clusters.rs load_assignment and dns_load_assignment: the endpoint's \
         loadBalancingWeight (0 or unset: 1, as Istio), for every address a name resolves to; \
         the proxy's balancers pick in proportion",
    ),
    Entry {
        path: "spec.endpoints[].serviceAccount",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::service_entry::ServiceEntrySpec::unsupported: rendered (operator \
             registry Svc::identities: spiffe://<trust domain>/ns/<entry namespace>/sa/<name> \
             is among the identities mutual TLS to the entry accepts); a name that cannot be a \
             service account's is refused",
        ),
        harmless: &[],
        example: r#"{"address": "10.0.0.1", "serviceAccount": "api/v1"}"#,
    },
    rendered(
        "spec.workloadSelector",
        &["labels"],
        "operator registry::selected_pods (the entry's namespace's ready pods, STATIC)",
    ),
    rendered("spec.exportTo", &[], "operator registry::exported"),
    Entry {
        path: "spec.subjectAltNames",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::service_entry::ServiceEntrySpec::unsupported: SPIFFE ids are \
             rendered (operator registry Svc::identities: among the identities mutual TLS to \
             the entry accepts, with its endpoints' service accounts); other names are refused, \
             not implemented by rustmesh: the sidecars verify mesh peers by SPIFFE id",
        ),
        harmless: &[],
        example: r#"{"subjectAltNames": ["api.example.com"]}"#,
    },
];

/// The words every Gateway refusal carries (docs/istio-fields.md says why each is not).
pub const GATEWAY_NOT_RENDERED: &str = "not implemented by rustmesh";

/// A Gateway server's `minProtocolVersion`, `maxProtocolVersion` or `cipherSuites`: rendered
/// as the chain's `tlsParams` on a server that terminates TLS; refused by value (TLS 1.0 and
/// 1.1, suites rustmesh's TLS does not have) or where nothing terminates TLS.
const fn tls_parameter(path: &'static str, example: &'static str) -> Entry {
    Entry {
        path,
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: rendered (render/gateway.rs \
             termination: the server chain's tlsParams, the proxy's rustls versions and TLS 1.2 \
             suites) on SIMPLE, MUTUAL, OPTIONAL_MUTUAL and ISTIO_MUTUAL servers; the field on a \
             server that terminates no TLS, a minimum above the maximum, TLSV1_0 and TLSV1_1 \
             (rustls has neither) and suites other than the ECDHE AES-GCM and ChaCha20 ones \
             are refused, not implemented by rustmesh",
        ),
        harmless: &[],
        example,
    }
}

/// A gateway server's `subjectAltNames`, `verifyCertificateSpki` or `verifyCertificateHash`:
/// rendered where client certificates are verified, reported where they would be ignored or
/// are malformed.
const fn client_pin(path: &'static str, example: &'static str) -> Entry {
    Entry {
        path,
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: rendered (render/gateway.rs \
             termination: the validation context's matchSubjectAltNames, verifyCertificateSpki \
             and verifyCertificateHash, checked by the proxy after the client's chain) on \
             MUTUAL, OPTIONAL_MUTUAL and ISTIO_MUTUAL servers; refused on servers that ask for \
             no client certificate (SIMPLE, PASSTHROUGH, plain text), where it would be \
             ignored, and when a digest is not a SHA-256 one",
        ),
        harmless: &[],
        example,
    }
}

/// Gateway: plain-text, HTTPS and TLS servers are rendered (selector, port number, name and
/// the HTTP, HTTPS, TLS and TCP protocols, hosts, server name, `tls.httpsRedirect`, `tls.mode`
/// PASSTHROUGH, SIMPLE, MUTUAL and OPTIONAL_MUTUAL with `tls.credentialName` or certificate
/// files, and ISTIO_MUTUAL); the rest is refused naming the field.
const GATEWAY: &[Entry] = &[
    rendered(
        "spec.selector",
        &[],
        "render/gateway.rs: the pods (any namespace) whose labels match get a gateway scope \
         (rustmesh_xds::scope::ScopeSelector with `gateways`)",
    ),
    rendered(
        "spec.servers[].port",
        &["number", "name"],
        "render/gateway.rs: one listener 0.0.0.0_<port> per server port (the targetPort of the \
         Service selecting the pod, else the number), route table http.<port>",
    ),
    rendered(
        "spec.servers[].port.protocol",
        &[],
        "render/gateway.rs: HTTP, HTTP2, GRPC and GRPC-WEB an HTTP connection manager; HTTPS TLS \
         terminated with the credential then HTTP, or PASSTHROUGH; TLS PASSTHROUGH by the bound \
         VirtualServices' tls routes, or terminated then their tcp routes; TCP, MONGO, REDIS \
         and MYSQL a TCP proxy from their tcp routes (the TLS modes not rendered are refused \
         by tls.mode)",
    ),
    refused(
        "spec.servers[].port.targetPort",
        "a Gateway's targetPort is not implemented by rustmesh; Istio ignores it too, the \
         listener's port is the targetPort of the Service selecting the gateway pod",
        "8080",
    ),
    rendered(
        "spec.servers[].hosts",
        &[],
        "render/gateway.rs: virtual hosts for the hosts of both the server (its namespace/ \
         part: which VirtualServices may use it) and the bound VirtualService",
    ),
    rendered(
        "spec.servers[].name",
        &[],
        "unique per Gateway (validation)",
    ),
    refused(
        "spec.servers[].bind",
        "binding a server to one address is not implemented by rustmesh: the listener binds \
         0.0.0.0",
        r#""10.0.0.1""#,
    ),
    refused(
        "spec.servers[].defaultEndpoint",
        "a server's defaultEndpoint is not implemented by rustmesh",
        r#""127.0.0.1:8080""#,
    ),
    rendered(
        "spec.servers[].tls.httpsRedirect",
        &[],
        "render/gateway.rs: every virtual host of the server answers with a 301 to https",
    ),
    Entry {
        path: "spec.servers[].tls.mode",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: on HTTPS and TLS servers, \
             SIMPLE, MUTUAL and OPTIONAL_MUTUAL are rendered (render/gateway.rs: a filter \
             chain per server, by SNI, terminating TLS with the credentialName or the \
             certificate files; MUTUAL requires a client certificate from their CA, \
             OPTIONAL_MUTUAL verifies one when presented), ISTIO_MUTUAL too (the gateway's \
             workload certificate, a client certificate from the mesh root required) and \
             PASSTHROUGH (a chain per SNI of the bound VirtualServices' tls routes, proxying \
             the TLS bytes unopened); AUTO_PASSTHROUGH and any mode on another server are \
             refused, not implemented by rustmesh",
        ),
        harmless: &[],
        example: r#"{"mode": "AUTO_PASSTHROUGH"}"#,
    },
    rendered(
        "spec.servers[].tls.serverCertificate",
        &[],
        "render/gateway.rs: with privateKey, the chain presents Istio's \
         file-cert:<serverCertificate>~<privateKey>, read by the gateway's proxy from the files \
         its pod mounts (rustmesh_api::gateway::GatewaySpec::unsupported refuses it next to a \
         credentialName)",
    ),
    rendered(
        "spec.servers[].tls.privateKey",
        &[],
        "render/gateway.rs: the key of file-cert:<serverCertificate>~<privateKey>",
    ),
    rendered(
        "spec.servers[].tls.caCertificates",
        &[],
        "render/gateway.rs: a MUTUAL or OPTIONAL_MUTUAL server with certificate files \
         verifies clients against file-root:<caCertificates>",
    ),
    Entry {
        path: "spec.servers[].tls.caCrl",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: rendered (render/gateway.rs: the \
             validation context's crl file, which the proxy checks every client chain \
             against) on MUTUAL and OPTIONAL_MUTUAL servers with caCertificates, as an absolute \
             path; refused on servers that verify no client certificate against a CA file \
             (SIMPLE, PASSTHROUGH, ISTIO_MUTUAL, plain text) and beside a credentialName, \
             whose Secret's ca.crl or crl key is used",
        ),
        harmless: &[],
        example: r#"{"mode": "SIMPLE", "credentialName": "c", "caCrl": "/etc/certs/crl.pem"}"#,
    },
    rendered(
        "spec.servers[].tls.credentialName",
        &[],
        "render/gateway.rs: the server's chain presents Secret kubernetes://<name> (and, for \
         MUTUAL and OPTIONAL_MUTUAL, verifies clients against kubernetes://<name>-cacert), \
         which the mesh CA serves to the gateway's proxy when its service account may list \
         Secrets of its namespace",
    ),
    Entry {
        path: "spec.servers[].tls.credentialNames",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: rendered (render/gateway.rs: one \
             kubernetes://<name> certificate each, the proxy presenting the one a client can \
             verify, by SNI then key type; clients verified against the first's -cacert) on \
             SIMPLE, MUTUAL and OPTIONAL_MUTUAL servers, at most two, not with credentialName \
             (Istio's rules); refused on PASSTHROUGH and plain-text servers, where it would be \
             ignored",
        ),
        harmless: &[],
        example: r#"{"mode": "PASSTHROUGH", "credentialNames": ["bookinfo-rsa", "bookinfo-ecdsa"]}"#,
    },
    Entry {
        path: "spec.servers[].tls.tlsCertificates",
        leaves: &[],
        support: Support::ReportedBy(
            "rustmesh_api::gateway::GatewaySpec::unsupported: rendered (render/gateway.rs: one \
             file-cert:<serverCertificate>~<privateKey> each, picked per client as \
             credentialNames; clients verified against the server's caCertificates, else the \
             first certificate's) on SIMPLE, MUTUAL and OPTIONAL_MUTUAL servers, at most two; \
             refused on PASSTHROUGH and plain-text servers, and a certificate's other CA bundle \
             (it would be ignored)",
        ),
        harmless: &[],
        example: r#"{"mode": "PASSTHROUGH", "tlsCertificates": [{"serverCertificate": "/etc/certs/server.pem", "privateKey": "/etc/certs/key.pem"}]}"#,
    },
    client_pin(
        "spec.servers[].tls.subjectAltNames",
        r#"{"mode": "SIMPLE", "credentialName": "c", "subjectAltNames": ["client.example.com"]}"#,
    ),
    client_pin(
        "spec.servers[].tls.verifyCertificateSpki",
        r#"{"mode": "MUTUAL", "credentialName": "c", "verifyCertificateSpki": ["short"]}"#,
    ),
    client_pin(
        "spec.servers[].tls.verifyCertificateHash",
        r#"{"mode": "PASSTHROUGH", "verifyCertificateHash": ["0E:A5:2E:4F:90:5A:6F:2B"]}"#,
    ),
    tls_parameter(
        "spec.servers[].tls.minProtocolVersion",
        r#"{"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_0"}"#,
    ),
    tls_parameter(
        "spec.servers[].tls.maxProtocolVersion",
        r#"{"mode": "SIMPLE", "credentialName": "c", "maxProtocolVersion": "TLSV1_1"}"#,
    ),
    tls_parameter(
        "spec.servers[].tls.cipherSuites",
        r#"{"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["AES128-SHA"]}"#,
    ),
];

/// The kinds the table covers.
pub const KINDS: [&str; 9] = [
    "VirtualService",
    "DestinationRule",
    "Sidecar",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Telemetry",
    "ServiceEntry",
    "Gateway",
];

/// The table of one kind (empty for a kind not in [`KINDS`]).
pub fn table(kind: &str) -> &'static [Entry] {
    match kind {
        "VirtualService" => VIRTUAL_SERVICE,
        "DestinationRule" => DESTINATION_RULE,
        "Sidecar" => SIDECAR,
        "PeerAuthentication" => PEER_AUTHENTICATION,
        "AuthorizationPolicy" => AUTHORIZATION_POLICY,
        "RequestAuthentication" => REQUEST_AUTHENTICATION,
        "Telemetry" => TELEMETRY,
        "ServiceEntry" => SERVICE_ENTRY,
        "Gateway" => GATEWAY,
        _ => &[],
    }
}

impl Entry {
    /// Whether this entry's `path` names the field at schema path `path`.
    pub fn matches(&self, path: &str) -> bool {
        pattern_matches(self.path, path)
    }

    /// Whether the field is reported (warned or refused).
    pub fn reported(&self) -> bool {
        !matches!(self.support, Support::Rendered(_))
    }
}

/// Whether `pattern` (`a.b`, or `**.a.b` at any depth) names the schema path `path`.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_prefix("**.") {
        Some(rest) => {
            path == rest
                || path
                    .strip_suffix(rest)
                    .is_some_and(|head| head.ends_with('.'))
        }
        None => pattern == path,
    }
}

/// The `spec` schema of a kind, from its CRD (structural: `properties`, `items`,
/// `additionalProperties`, every `$ref` inlined).
pub fn spec_schema(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            crate::crd::all()
                .into_iter()
                .filter_map(|(_, crd)| {
                    let schema = crd.spec.versions.first()?.schema.as_ref()?;
                    let value = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
                    Some((crd.spec.names.kind, value["properties"]["spec"].clone()))
                })
                .collect()
        })
        .get(kind)
}

/// One field of an object that rustmesh does not implement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Its path in the object: `spec.http[0].corsPolicy`.
    pub field: String,
    /// Whether the object is refused for it (else a warning).
    pub refused: bool,
    pub message: String,
}

impl Report {
    pub fn into_field_error(self) -> FieldError {
        FieldError::new(self.field, self.message)
    }
}

/// The fields of `spec` (of `kind`) that rustmesh does not implement, in document order.
pub fn report<T: Serialize>(kind: &str, spec: &T) -> Vec<Report> {
    let (Some(schema), Ok(value)) = (spec_schema(kind), serde_json::to_value(spec)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(table(kind), schema, &value, "spec", "spec", &mut out);
    out
}

/// The refused fields of `spec` as errors ([`crate::validate::Validate`] adds them).
pub fn refused_fields<T: Serialize>(kind: &str, spec: &T) -> Vec<FieldError> {
    report(kind, spec)
        .into_iter()
        .filter(|r| r.refused)
        .map(Report::into_field_error)
        .collect()
}

/// The warned fields of `spec`: accepted, ignored, reported.
pub fn warned_fields<T: Serialize>(kind: &str, spec: &T) -> Vec<FieldError> {
    report(kind, spec)
        .into_iter()
        .filter(|r| !r.refused)
        .map(Report::into_field_error)
        .collect()
}

fn walk(
    table: &[Entry],
    schema: &Value,
    value: &Value,
    schema_path: &str,
    path: &str,
    out: &mut Vec<Report>,
) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let Some(fields) = value.as_object() else {
            return;
        };
        for (name, child_schema) in props {
            let Some(child) = fields.get(name).filter(|v| !v.is_null()) else {
                continue;
            };
            let sp = format!("{schema_path}.{name}");
            let p = format!("{path}.{name}");
            let reported = table.iter().find(|e| e.reported() && e.matches(&sp));
            match reported {
                Some(Entry {
                    support: Support::ReportedBy(_),
                    ..
                }) => {}
                Some(e) if !e.harmless.contains(&child.to_string().as_str()) => {
                    let (refused, message) = match e.support {
                        Support::Refused(why) => {
                            (true, format!("not implemented by rustmesh: {why}"))
                        }
                        Support::Warned(why) => (
                            false,
                            format!("ignored, not implemented by rustmesh: {why}"),
                        ),
                        Support::Rendered(_) | Support::ReportedBy(_) => {
                            unreachable!("only reported entries")
                        }
                    };
                    out.push(Report {
                        field: p,
                        refused,
                        message,
                    });
                }
                Some(_) => {}
                None => walk(table, child_schema, child, &sp, &p, out),
            }
        }
    } else if let Some(items) = schema.get("items") {
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            walk(
                table,
                items,
                item,
                &format!("{schema_path}[]"),
                &format!("{path}[{i}]"),
                out,
            );
        }
    } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        for (key, item) in value.as_object().into_iter().flatten() {
            walk(
                table,
                values,
                item,
                &format!("{schema_path}{{}}"),
                &format!("{path}.{key}"),
                out,
            );
        }
    }
}

/// Every leaf field of a `spec` schema (a field whose value, or whose items or map values, are
/// not objects with properties), with the paths of the fields on the way to it (itself last).
pub fn leaves(kind: &str) -> Vec<Vec<String>> {
    fn go(schema: &Value, path: &str, trail: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut inner = schema;
        let mut inner_path = path.to_string();
        loop {
            if let Some(items) = inner.get("items") {
                inner = items;
                inner_path.push_str("[]");
            } else if let Some(values) = inner.get("additionalProperties").filter(|v| v.is_object())
            {
                inner = values;
                inner_path.push_str("{}");
            } else {
                break;
            }
        }
        match inner.get("properties").and_then(Value::as_object) {
            Some(props) => {
                for (name, child) in props {
                    let p = format!("{inner_path}.{name}");
                    trail.push(p.clone());
                    go(child, &p, trail, out);
                    trail.pop();
                }
            }
            None => out.push(trail.clone()),
        }
    }
    let mut out = Vec::new();
    if let Some(schema) = spec_schema(kind) {
        go(schema, "spec", &mut Vec::new(), &mut out);
    }
    out
}

/// For the tests that prove the table (here and in the operator): one `spec` of `kind` per place
/// the schema has the reported field of `entry`, holding its example value, with the path it
/// has there (`spec.subsets[0].trafficPolicy.tls.caCrl`).
pub fn examples(kind: &str, entry: &Entry) -> Vec<(String, Value)> {
    let Ok(example) = serde_json::from_str::<Value>(entry.example) else {
        return Vec::new();
    };
    let fields: std::collections::BTreeSet<String> = leaves(kind).into_iter().flatten().collect();
    fields
        .iter()
        .filter(|f| entry.matches(f))
        .map(|place| {
            let mut spec = base(kind);
            if let Support::ReportedBy(_) = entry.support {
                let (parent, name) = place.rsplit_once('.').expect("a field below spec");
                let at = put(&mut spec, parent, example.clone());
                (format!("{at}.{name}"), spec)
            } else {
                let at = put(&mut spec, place, example.clone());
                (at, spec)
            }
        })
        .collect()
}

/// A valid object of `kind` in which every place the tables name exists (arrays with one
/// element, DestinationRule policies at the top, per port, per subset and per subset port).
/// A ServiceEntry's is STATIC with one endpoint, so that every endpoint field has a place.
pub fn base(kind: &str) -> Value {
    match kind {
        "VirtualService" => json!({
            "hosts": ["reviews"],
            "http": [{"match": [{"uri": {"prefix": "/"}}], "route": [{"destination": {"host": "reviews"}}]}],
            "tcp": [{"match": [{"port": 3306}], "route": [{"destination": {"host": "ratings"}}]}],
            "tls": [{"match": [{"sniHosts": ["reviews"], "port": 443}],
                     "route": [{"destination": {"host": "reviews"}}]}],
        }),
        "DestinationRule" => json!({
            "host": "reviews",
            "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}}]},
            "subsets": [{"name": "v1", "labels": {"version": "v1"},
                         "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}}]}}],
        }),
        "Sidecar" => json!({
            "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                         "defaultEndpoint": "127.0.0.1:8080"}],
            "egress": [{"port": {"number": 3306, "protocol": "TCP"}, "hosts": ["./*"]}],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        }),
        "AuthorizationPolicy" => json!({
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}],
                "to": [{"operation": {"methods": ["GET"], "ports": ["9080"]}}],
                "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}],
            }],
        }),
        "RequestAuthentication" => json!({
            "jwtRules": [{
                "issuer": "https://accounts.example.com",
                "jwks": BASE_JWKS,
                "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
            }],
        }),
        "Telemetry" => json!({
            "tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10.0}],
            "metrics": [{
                "providers": [{"name": "prometheus"}],
                "overrides": [{"match": {"mode": "CLIENT"}, "disabled": true}],
            }],
            "accessLogging": [{"providers": [{"name": "envoy"}]}],
        }),
        // Valid for Istio and rendered by rustmesh (no error, no warning).
        "ServiceEntry" => json!({
            "hosts": ["api.example.com"],
            "addresses": ["192.0.2.10"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "endpoints": [{"address": "192.0.2.20"}],
        }),
        // Istio's bookinfo-gateway, with its server named and redirecting to HTTPS.
        "Gateway" => json!({
            "selector": {"istio": "ingressgateway"},
            "servers": [{
                "port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                "hosts": ["*"],
                "name": "bookinfo",
                "tls": {"httpsRedirect": true},
            }],
        }),
        _ => json!({}),
    }
}

/// A key set the sidecar can use (one EC P-256 public key), for [`base`].
const BASE_JWKS: &str = r#"{"keys":[{"kty":"EC","kid":"ec-1","crv":"P-256","x":"gem6MeICc5zwyVkxMD0kf-W-UiiotfqfXA-E5ceRqD4","y":"zAQm6-AISfBYp8RwT8izNCgE1lIJN3QifCMgK8c7tJk"}]}"#;

/// `value` with `example` put at the schema field path `path` (`spec.a[].b`, `spec.m{}.c`):
/// arrays get (or keep) their first element, maps their first value (else one under the key
/// `example`), objects are made on the way; a path ending in `[]` (the items holding a
/// [`Support::ReportedBy`] field) gets an array of the example alone. Returns the object's
/// path of it.
/// At `spec` itself (the parent of a top-level [`Support::ReportedBy`] field), the example's
/// fields are set in the spec, the others kept.
fn put(value: &mut Value, path: &str, example: Value) -> String {
    if path == "spec" {
        if let (Some(spec), Value::Object(fields)) = (value.as_object_mut(), example) {
            spec.extend(fields);
        }
        return "spec".to_string();
    }
    let mut at = value;
    let mut concrete = String::from("spec");
    let segments: Vec<&str> = path.strip_prefix("spec.").unwrap().split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let name = seg.trim_end_matches("[]").trim_end_matches("{}");
        concrete.push('.');
        concrete.push_str(name);
        if !at.is_object() {
            *at = json!({});
        }
        if last {
            if seg.ends_with("[]") {
                // The parent of a reported field inside array items: the example is its item.
                at[name] = json!([example]);
                concrete.push_str("[0]");
            } else {
                at[name] = example;
            }
            return concrete;
        }
        if seg.ends_with("[]") {
            if !at[name].is_array() || at[name].as_array().unwrap().is_empty() {
                at[name] = json!([{}]);
            }
            at = &mut at[name][0];
            concrete.push_str("[0]");
        } else if seg.ends_with("{}") {
            // A map: its first value, or one under the key `example`.
            if at[name].as_object().is_none_or(|m| m.is_empty()) {
                at[name] = json!({"example": {}});
            }
            let key = at[name].as_object().unwrap().keys().next().unwrap().clone();
            concrete.push('.');
            concrete.push_str(&key);
            at = &mut at[name][key.as_str()];
        } else {
            if at[name].is_null() {
                at[name] = json!({});
            }
            at = &mut at[name];
        }
    }
    unreachable!("empty path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_at_field_boundaries() {
        assert!(pattern_matches("spec.tls", "spec.tls"));
        assert!(!pattern_matches("spec.tls", "spec.tls[].match"));
        assert!(pattern_matches(
            "**.tls.caCrl",
            "spec.subsets[].trafficPolicy.portLevelSettings[].tls.caCrl"
        ));
        assert!(pattern_matches("**.tls.caCrl", "tls.caCrl"));
        assert!(!pattern_matches("**.tls.caCrl", "spec.mtls.caCrl"));
    }
}
