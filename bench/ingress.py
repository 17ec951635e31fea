"""`bench/run --ingress`: the ingress gateway, rustmesh's `proxy run --type router` against Envoy
as a gateway, from the same Gateway-equivalent configuration (`configs.rustmesh_gateway`,
`configs.envoy_gateway`), for HTTP/1.1 and HTTPS termination.

Topology: bench/run's namespaces, the gateway in the bridge namespace (rmbbr, br0's address
10.213.0.1, which both pods reach directly), pinned to PROXY_CORE as the sidecars are, run as uid
1337; `testapp serve` in the server pod (10.213.0.11:9080), the load generator in the client pod,
both on LOAD_CORE. No capture rules anywhere: the client connects to the gateway's address and
ports (8080 HTTP, 8443 HTTPS) by the host name the Gateway serves, which the client pod resolves
to the gateway from /etc/netns/rmbcli/hosts (`ip netns exec` mounts it over /etc/hosts; made by
the run, removed at its end), so that every tool sends that host as SNI and Host header.
"no proxy" is the client straight to the server (plain HTTP): the baseline of added latency.

Measurements (bench/run's helpers: `measure`, `wrk`, `oha`, the CPU / RSS sampler):
- HTTP/1.1 and HTTPS keep-alive max req/s (`wrk -c50`), and per gateway core: requests / the
  gateway's CPU seconds over the run;
- TLS handshakes per second per core: every request a new TLS connection, `h2load --h1` in rate
  mode with one request per connection (h2load never resumes a session: each connection a full
  handshake, checked with Envoy's `ssl.session_reused`; wrk and oha both resume), at 1.1x the
  rate a 500-connection burst reached (a short calibration per contestant), so that the gateway
  is saturated; per core = handshakes / the gateway's CPU seconds;
- p50/p99/p99.9 (`oha`, coordinated-omission corrected) at ½ Envoy's HTTP max (HTTP) and ½
  Envoy's HTTPS max (HTTPS), added p99 = gateway − no proxy at the same rate;
- RSS: VmRSS of the gateway 3 s after the throughput loads (SETTLE_S: the allocator has handed
  back what the last load freed; rustmesh's jemalloc purges after 1 s), and VmHWM, the peak
  during them.

rustmesh's HTTPS uses the router's gateway certificate files, Istio's SDS name
`file-cert:<chain>~<key>` (BENCH_FILE_CERT=no leaves rustmesh only the HTTP listener, its HTTPS
rows then say "needs file-cert support"); a proxy that refuses the HTTPS configuration (one built
before those files were read) or fails its HTTPS path check is run without it, and its rows say
that. None of these fails the run.
"""

import json
import os
import re
import shutil
import signal
import statistics
import time

import configs

R = None  # bench/run, as a module (main() is handed it)
# contestant -> why its HTTPS was not measured (the table's cells), and the log that says so
NOT_HTTPS = {}
SETTLE_S = 3  # seconds between the last load and the RSS reading, for every contestant
DETAIL = {}
HOST = "bookinfo.example.com"
CONTESTANTS = ["none", "rustmesh", "envoy"]
COMM = {"rustmesh": "proxy", "envoy": "envoy"}
HTTP_PORT, HTTPS_PORT = configs.GW_HTTP[1], configs.GW_HTTPS[1]
HTTP_URL = f"http://{HOST}:{HTTP_PORT}/"
HTTPS_URL = f"https://{HOST}:{HTTPS_PORT}/"
NO_FILE_CERT = "needs file-cert support"
# the targets: (metric key, label, "min" ratio or "max" ratio, target); None: no target
TARGETS = [
    ("http1_max.rps", "HTTP/1.1 keep-alive max req/s", None, None),
    ("http1_max.proxy_cpu_cores", "HTTP/1.1: gateway CPU cores used at max", None, None),
    ("http1_max.rps_per_core", "HTTP/1.1 keep-alive req/s per gateway core", "min", 1.5),
    ("https_max.rps", "HTTPS keep-alive max req/s", None, None),
    ("https_max.proxy_cpu_cores", "HTTPS: gateway CPU cores used at max", None, None),
    ("https_max.rps_per_core", "HTTPS keep-alive req/s per gateway core", "min", 1.5),
    ("lat_half_http.p50", "HTTP/1.1 p50 ms @½ Envoy's HTTP max", None, None),
    ("lat_half_http.p99", "HTTP/1.1 p99 ms @½ Envoy's HTTP max", None, None),
    ("lat_half_http.p99.9", "HTTP/1.1 p99.9 ms @½ Envoy's HTTP max", None, None),
    ("lat_half_http.added_p99", "HTTP/1.1 added p99 ms @½ Envoy's HTTP max", "max", 0.5),
    ("lat_half_https.p50", "HTTPS p50 ms @½ Envoy's HTTPS max", None, None),
    ("lat_half_https.p99", "HTTPS p99 ms @½ Envoy's HTTPS max", None, None),
    ("lat_half_https.p99.9", "HTTPS p99.9 ms @½ Envoy's HTTPS max", None, None),
    ("lat_half_https.added_p99", "HTTPS added p99 ms @½ Envoy's HTTPS max (vs plain HTTP, no proxy)", "max", 0.5),
    ("handshakes.rps", "TLS handshakes/s (new TLS connection per request)", None, None),
    ("handshakes.proxy_cpu_cores", "TLS handshakes: gateway CPU cores used", None, None),
    ("handshakes.rps_per_core", "TLS handshakes/s per gateway core", None, None),
    ("handshakes.conns_per_request", "gateway connections per request, handshakes (listener counters)", None, None),
    ("handshakes.tls_resumed_fraction", "TLS sessions resumed / handshakes (Envoy's counters)", None, None),
    ("rss_idle_kb", "RSS idle MiB", None, None),
    ("rss_after_kb", "RSS MiB 3 s after the throughput loads (VmRSS)", "max", 0.25),
    ("rss_hwm_kb", "RSS high-water MiB (VmHWM)", None, None),
]
HTTPS_KEYS = ("https_max.", "lat_half_https.", "handshakes.")


def log(*a):
    R.log(*a)


# ---- the client pod's name for the gateway ------------------------------------------------------

class Hosts:
    """/etc/netns/<client ns>/hosts naming the gateway; removed (with the directory, if made) on exit."""

    def __init__(self, ip):
        self.dir = f"/etc/netns/{R.CLI}"
        self.path = os.path.join(self.dir, "hosts")
        self.ip = ip

    def __enter__(self):
        if os.path.exists(self.path):
            raise RuntimeError(f"{self.path} exists already: not ours, not overwritten")
        self.made_root = not os.path.isdir("/etc/netns")
        self.made_dir = not os.path.isdir(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        with open(self.path, "w") as f:
            f.write(f"127.0.0.1 localhost\n{self.ip} {HOST}\n")
        return self

    def __exit__(self, *exc):
        try:
            os.remove(self.path)
            if self.made_dir:
                os.rmdir(self.dir)
                if self.made_root and not os.listdir("/etc/netns"):
                    os.rmdir("/etc/netns")
        except OSError as e:
            log(f"could not remove {self.path}: {e}")


# ---- the gateways ---------------------------------------------------------------------------------

class Gateway:
    """One contestant: the gateway process (none for "no proxy") and what its paths proved."""

    def __init__(self, name, https):
        self.name, self.https = name, https  # https: served (bool), or why not (str)
        self.sidecars = []
        self.requests = 1

    def pids(self):
        return [p.pid for p in self.sidecars]

    def url(self, tls=False):
        return R.URL if self.name == "none" else HTTPS_URL if tls else HTTP_URL

    def __enter__(self):
        if self.name == "rustmesh" and self.https is True:
            try:
                self.sidecars.append(start_gateway(self.name, True))
            except RuntimeError as e:
                # e.g. a binary older than its source: the credential's name is refused, and with
                # it the whole configuration. Not the run's failure: rustmesh's HTTPS rows say why.
                lines = [x for x in str(e).splitlines() if "secret" in x or "8443" in x or "WARN" in x or "ERROR" in x]
                log(f"  rustmesh never got ready with the HTTPS listener: {(lines or [str(e)])[-1][:400]}")
                self.https = NOT_HTTPS["rustmesh"] = "HTTPS configuration refused by the proxy"
                DETAIL["rustmesh"] = str(e)[-3000:]
        if self.name != "none" and not self.sidecars:
            self.sidecars.append(start_gateway(self.name, self.https is True))
        try:
            self.check_paths()
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in self.sidecars:
            R.stop(p, signal.SIGKILL)
        self.sidecars = []
        time.sleep(0.5)

    def get(self, url, *curl):
        r = R.sh(R.nsx(R.CLI, "curl", "-s", "-m", "5", "-w", "\n%{http_code}", *curl, url), check=False)
        body, _, code = r.stdout.rpartition("\n")
        return r.returncode, code, body

    def check_paths(self):
        """The request reaches the app through the gateway (the app sees the gateway's address and
        the Host sent); a host the Gateway does not serve gets 404; over HTTPS the same, the
        gateway presenting the host's certificate (curl verifies it against the run's root)."""
        if self.name == "none":
            rc, code, _ = self.get(R.URL)
            if code != "200":
                raise RuntimeError(f"no proxy: {R.URL} answered {code!r} (curl exit {rc})")
            return
        paths = [(HTTP_URL, ())]
        if self.https is True:
            paths.append((HTTPS_URL, ("--cacert", os.path.join(R.WORK, "certs", "root-cert.pem"))))
        for url, extra in paths:
            rc, code, body = self.get(url, *extra)
            try:
                seen = json.loads(body)
            except ValueError:
                seen = {}
            peer = seen.get("peer", "")
            host = seen.get("headers", {}).get("host", "")
            if code != "200" or not peer.startswith(GW_IP + ":") or not host.startswith(HOST):
                why = (f"{self.name}: {url} through the gateway: HTTP {code!r} (curl exit {rc}), the app saw "
                       f"peer {peer!r}, host {host!r} (want {GW_IP}, {HOST})")
                if url == HTTPS_URL and self.name == "rustmesh":
                    # not the run's failure: rustmesh's HTTPS rows say why
                    log(f"  {why}: rustmesh's HTTPS rows left out")
                    self.https = f"HTTPS path check failed (HTTP {code or '-'}, curl exit {rc})"
                    continue
                raise RuntimeError(why + f"; its log: {os.path.join(R.WORK, f'ingress-{self.name}.log')}")
            rc, code, _ = self.get(url, *extra, "-H", "Host: other.example.com")
            if code != "404":
                raise RuntimeError(f"{self.name}: a host the Gateway does not serve answered {code!r} at {url}")
        self.requests += len(paths) * 2


def start_gateway(name, https):
    as1337 = ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups"]
    doc = os.path.join(R.WORK, f"ingress-{name}{'-https' if https and name == 'rustmesh' else ''}.json")
    if name == "rustmesh":
        argv = R.nsx(R.BR, "taskset", "-c", R.PROXY_CORE, *as1337, R.BIN["proxy"], "run", "--type", "router",
                     "--config", doc, "--config-poll-interval", "5s")
        ready = "http://127.0.0.1:15021/healthz/ready"
    else:
        argv = R.nsx(R.BR, "taskset", "-c", R.PROXY_CORE, *as1337, R.BIN["envoy"], "-c", doc,
                     "--concurrency", "1", "--disable-hot-restart", "-l", "warning")
        ready = "http://127.0.0.1:15000/ready"
    logname = f"ingress-{name}.log"
    p = R.spawn(argv, logname, uid=1337)
    ports = [HTTP_PORT] + ([HTTPS_PORT] if https or name == "envoy" else [])
    try:
        R.wait_http(R.BR, ready)
        R.wait_listening(R.BR, ports)
    except RuntimeError as e:
        ss = R.sh(R.nsx(R.BR, "ss", "-tlnp"), check=False).stdout
        with open(os.path.join(R.WORK, logname)) as f:
            R.stop(p, signal.SIGKILL)
            raise RuntimeError(f"{e}; its log:\n{f.read()[-2000:]}\nlisteners in {R.BR}:\n{ss}") from None
    with open(f"/proc/{p.pid}/comm") as f:
        comm = f.read().strip()
    if comm != COMM[name]:
        R.stop(p, signal.SIGKILL)
        raise RuntimeError(f"pid {p.pid} is {comm!r}, not the gateway (is taskset/setpriv exec-ing?)")
    return p


# ---- workloads ------------------------------------------------------------------------------------

def listener_stats(c):
    """The HTTPS listener's counters: connections, and (Envoy) TLS handshakes and resumed sessions."""
    if c.name == "none":
        return {}
    prefix = f"listener.0.0.0.0_{HTTPS_PORT}."
    st = R.admin_stats(R.BR, r"^listener\.0\.0\.0\.0_%d\.(downstream_cx_total|ssl\.handshake|ssl\.session_reused)$"
                       % HTTPS_PORT)
    return {k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)}


def h2load_handshakes(rate, conns):
    """`conns` new TLS connections, one HTTP/1.1 request each, `rate` per second (a tenth every
    100 ms); h2load keeps no session, so each is a full handshake."""
    per = max(1, round(rate / 10))
    argv = ["h2load", "--h1", "-t1", "-r", str(per), "--rate-period", "100ms", "-c", str(conns), "-n", str(conns),
            HTTPS_URL]
    out = R.load(argv, timeout=max(60, conns // 50 + 60))
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                       out)
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    ok = int(done.group(2))
    return {"rps": ok / secs if secs else 0.0, "requests": ok, "failed": int(done.group(3)),
            "errored": int(done.group(4)), "offered_rps": per * 10, "elapsed_s": secs}


def handshakes(c, duration):
    """Calibrate (a 500-connection burst: what rate the pair reaches), then `duration` s at 1.1x
    that rate in h2load's rate mode, measured (`measure`: the gateway's CPU and RSS)."""
    burst = 500
    argv = ["h2load", "--h1", "-t1", "-c", str(burst), "-n", str(burst), HTTPS_URL]
    out = R.load(argv, timeout=120)
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    reach = float(m.group(1)) if m else 1000.0
    c.requests += burst
    rate = max(10, int(reach * 1.1))
    before = listener_stats(c)
    r = R.measure(c, "tls handshakes", h2load_handshakes, rate, rate * duration)
    after = listener_stats(c)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    r["calibration_rps"] = reach
    if r["requests"] and "downstream_cx_total" in delta:
        r["conns_per_request"] = delta["downstream_cx_total"] / r["requests"]
    if delta.get("ssl.handshake"):
        r["tls_handshakes"] = delta["ssl.handshake"]
        r["tls_resumed_fraction"] = delta.get("ssl.session_reused", 0) / delta["ssl.handshake"]
        if r["tls_resumed_fraction"] > 0.01:
            log(f"  {c.name}: {r['tls_resumed_fraction']:.0%} of the handshakes resumed a session: "
                "not full handshakes!")
    if r["failed"] or r["errored"]:
        log(f"  {c.name}: {r['failed']} failed, {r['errored']} errored requests in the handshake run")
    return r


def per_core(r):
    """Requests (or handshakes) per second of one gateway core: requests / the gateway's CPU
    seconds over the run."""
    if r.get("proxy_cpu_s"):
        r["rps_per_core"] = r["requests"] / r["proxy_cpu_s"]
    return r


def oha_extra(tls):
    """oha's flags for the gateway: its own resolver is told where the host is (--connect-to), and
    over TLS the run's root is trusted."""
    port = HTTPS_PORT if tls else HTTP_PORT
    extra = ["--connect-to", f"{HOST}:{port}:{GW_IP}:{port}"]
    if tls:
        extra += ["--cacert", os.path.join(R.WORK, "certs", "root-cert.pem")]
    return extra


def run(args, raw, https_rustmesh):
    D = args.duration
    res = raw.setdefault("ingress", {c: {} for c in args.contestants})

    def add(c, key, value):
        res[c.name].setdefault(key, []).append(value)

    def https_of(name):
        if name in NOT_HTTPS:
            return NOT_HTTPS[name]
        return True if name == "envoy" else https_rustmesh if name == "rustmesh" else False

    log(f"== ingress: throughput phase ({args.repeats} repeats)")
    for rep in range(args.repeats):
        for name in args.contestants:
            with Gateway(name, https_of(name)) as c:
                if c.pids():
                    add(c, "rss_idle_kb", sum(R.status_kb(p, "VmRSS") for p in c.pids()))
                c.requests += R.wrk(1, 16, url=c.url())["requests"]  # warm-up
                add(c, "http1_max", per_core(R.measure(c, "http1 max", R.wrk, D, args.conns, False, c.url())))
                if c.https is True:
                    c.requests += R.wrk(1, 16, url=c.url(True))["requests"]
                    r = R.measure(c, "https max", R.wrk, D, args.conns, False, c.url(True))
                    add(c, "https_max", per_core(r))
                    add(c, "handshakes", per_core(handshakes(c, D)))
                elif isinstance(c.https, str) and name != "none":
                    NOT_HTTPS[name] = c.https
                if c.pids():
                    time.sleep(SETTLE_S)
                    add(c, "rss_after_kb", sum(R.status_kb(p, "VmRSS") for p in c.pids()))
                    add(c, "rss_hwm_kb", sum(R.status_kb(p, "VmHWM") for p in c.pids()))
    if not R.BIN.get("oha"):
        log("oha not installed: skipping the fixed-rate latency phase")
        return
    rates = {}
    for key, metric in (("lat_half_http", "http1_max"), ("lat_half_https", "https_max")):
        envoy_max = [r["rps"] for r in res.get("envoy", {}).get(metric, [])]
        if envoy_max:
            rates[key] = int(statistics.median(envoy_max) / 2)
    res["_rates"] = rates
    log(f"== ingress: latency phase at {rates}")
    for rep in range(args.repeats):
        for name in args.contestants:
            with Gateway(name, https_of(name)) as c:
                c.requests += R.wrk(1, 16, url=c.url())["requests"]  # warm-up
                if c.https is True:
                    c.requests += R.wrk(1, 16, url=c.url(True))["requests"]
                for key, rate in rates.items():
                    tls = key == "lat_half_https"
                    if name == "none":  # the baseline at both rates: plain HTTP, straight to the app
                        add(c, key, R.measure(c, f"{key}@{rate}", R.oha, D, rate))
                    elif not tls or c.https is True:
                        add(c, key, R.measure(c, f"{key}@{rate}", R.oha, D, rate, 32, c.url(tls), oha_extra(tls)))


# ---- the table ------------------------------------------------------------------------------------

def verdict(kind, target, rm, ev, ratio, key):
    if kind is None:
        return "–", "no target" if key == "handshakes.rps_per_core" else ""
    bound = f"≥ {target}x" if kind == "min" else f"≤ {target}x"
    if ratio is None:
        return bound, "–"
    if "added_p99" in key and (ev is None or ev <= 0):
        return bound, "undetermined: Envoy's added p99 within noise"
    ok = ratio >= target if kind == "min" else ratio <= target
    return bound, "met" if ok else "not met"


def table(summary):
    t = summary["ingress"]
    med, rat, rates = t["medians"], t["ratios"].get("rustmesh/envoy", {}), t["rates"]
    why_not = dict(NOT_HTTPS)
    half = ", ".join(f"½ Envoy's {k.split('_')[-1].upper()} max = {v} req/s" for k, v in rates.items())
    lines = [f"\n### ingress gateway ({half or 'no latency phase'})\n",
             "| metric | no proxy | rustmesh | Envoy | rustmesh/Envoy | target | verdict |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for key, label, kind, target in TARGETS:
        scale = 1 / 1024 if key.startswith("rss") else 1
        cells = []
        for name in ("none", "rustmesh", "envoy"):
            v = med.get(name, {}).get(key)
            if v is None and name in why_not and key.startswith(HTTPS_KEYS):
                cells.append(why_not[name])
            else:
                cells.append(R.fmt(v * scale if v is not None else None, 3 if "fraction" in key or "conns_per" in key
                                   else 2))
        rm, ev = med.get("rustmesh", {}).get(key), med.get("envoy", {}).get(key)
        ratio = rat.get(key)
        if key.startswith(HTTPS_KEYS) and "rustmesh" in why_not:
            bound = (f"≥ {target}x" if kind == "min" else f"≤ {target}x") if kind else "–"
            v = why_not["rustmesh"]
        else:
            bound, v = verdict(kind, target, rm, ev, ratio, key)
        if all(x is None or x == "–" for x in (rm, ev)) and not (key.startswith(HTTPS_KEYS) and why_not):
            continue
        rows.append({"key": key, "label": label, "rustmesh": rm, "envoy": ev, "none": med.get("none", {}).get(key),
                     "ratio": ratio, "target": bound, "verdict": v})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {R.fmt(ratio)} | {bound} | {v} |")
    return "\n".join(lines) + "\n", rows


# ---- the run ------------------------------------------------------------------------------------

GW_IP = None


def file_cert_support():
    """Whether rustmesh gets the HTTPS listener, its certificate from files (`file-cert:`, which
    the router reads since issue #20's gateway certificate files): yes unless BENCH_FILE_CERT=no.
    A binary that refuses the configuration (one older than that) is run without it
    (`Gateway.__enter__`), and its rows say so."""
    return os.environ.get("BENCH_FILE_CERT", "yes") != "no", "BENCH_FILE_CERT"


def main(run_module, args):
    global R, GW_IP
    R = run_module
    GW_IP = f"{R.SUBNET}.1"
    args.contestants = [c for c in (args.contestants or CONTESTANTS) if c in CONTESTANTS]
    if "envoy" not in args.contestants:
        args.contestants.append("envoy")  # ½ Envoy's max is every latency figure's rate
    os.makedirs(R.RESULTS, exist_ok=True)
    R.make_certs()
    cert_dir = R.make_leaf("gateway", f"DNS:{HOST}", "serverAuth", subject=f"/CN={HOST}")
    file_cert, why = file_cert_support()
    https_rustmesh = True if file_cert else NO_FILE_CERT
    if not file_cert and "rustmesh" in args.contestants:
        NOT_HTTPS["rustmesh"] = NO_FILE_CERT
        log(f"{why}=no: rustmesh's HTTPS rows say \"{NO_FILE_CERT}\"")
    docs = {"ingress-rustmesh.json": configs.rustmesh_gateway(R.S_IP, R.HTTP_PORT, HOST),
            "ingress-rustmesh-https.json": configs.rustmesh_gateway(R.S_IP, R.HTTP_PORT, HOST, cert_dir),
            "ingress-envoy.json": configs.envoy_gateway(R.S_IP, R.HTTP_PORT, HOST, cert_dir)}
    for n, doc in docs.items():
        with open(os.path.join(R.WORK, n), "w") as f:
            json.dump(doc, f, indent=1)
        os.chmod(os.path.join(R.WORK, n), 0o644)
    raw = {}
    started = time.time()
    try:
        R.netns_up()
        with Hosts(GW_IP):
            upstream = R.start_upstream()
            run(args, raw, https_rustmesh)
            for p in upstream:
                R.stop(p)
    finally:
        for p in list(R.PROCS):
            R.stop(p, signal.SIGKILL)
        R.netns_down()
    summary = R.summarize(raw)
    md, rows = table(summary)
    doc = {"machine": R.machine(),
           "settings": {"quick": args.quick, "repeats": args.repeats, "duration_s": args.duration,
                        "wrk_conns": args.conns, "proxy_core": R.PROXY_CORE, "load_core": R.LOAD_CORE,
                        "host": HOST, "gateway": GW_IP, "rustmesh_file_cert": file_cert,
                        "elapsed_s": round(time.time() - started)},
           "summary": summary, "https_not_measured": NOT_HTTPS, "https_refusal_log": DETAIL, "table": rows, "raw": raw}
    with open(args.out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    m = doc["machine"]
    head = (f"{m['date']}, {m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}; rustmesh {m['rustmesh']}, "
            f"Envoy {m['envoy']}; {args.repeats} repeat(s) x {args.duration} s, medians\n")
    with open(args.out + ".md", "w") as f:
        f.write(head + md)
    print(head + md)
    log(f"wrote {args.out}.json, {args.out}.md")
    shutil.rmtree(os.path.join(R.WORK, "certs", "gateway"), ignore_errors=True)
