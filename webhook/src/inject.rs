//! What is injected: the `istio-init` and `istio-proxy` containers, their volumes, labels and the
//! status annotation, as Istio's injector renders them: the whole injected pod is built, then
//! compared with the submitted one into an RFC 6902 JSON Patch ([`crate::patch`]).
//!
//! The steps, in Istio's order:
//!
//! 1. a pod injected before is stripped of what its `sidecar.istio.io/status` lists
//!    ([`crate::reinject`]);
//! 2. the pod's own `istio-proxy` and `istio-init` are taken out as overlays
//!    ([`crate::overlay`]);
//! 3. the annotations Istio validates are checked, all at once ([`crate::annotations`]);
//! 4. the template the pod asks for (`inject.istio.io/templates`, [`crate::templates`]) is
//!    rendered: `sidecar` (capture and sidecar) or `gateway` (a standalone proxy);
//! 5. the custom templates the pod asks for ([`crate::custom_templates`]) are merged onto the
//!    rendered `istio-proxy`/`istio-init`, then the pod's overlays; the app's probes are
//!    rewritten and its metrics merged (both read by the sidecar from its environment);
//! 6. the rest of each custom template is merged onto the injected pod, in order, and the status
//!    annotation lists what the injection and the templates added.

use std::collections::BTreeMap;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, LocalObjectReference, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustmesh_xds::{ca, probe, well_known};
use serde::Serialize;
use serde_json::{Value, json};

use crate::annotations::Failures;
use crate::custom_templates::Fragment;
use crate::names::*;
use crate::overlay::{Overlays, Overrides};
use crate::settings::InjectionSettings;
use crate::templates::Template;
use crate::traffic::{InterceptionMode, InvalidAnnotations, Traffic};
use crate::values;

/// The result of [`inject`]: the patch and the warnings to return to the user.
#[derive(Debug)]
pub struct Injection {
    /// RFC 6902 patch against the submitted pod; empty when the pod already is as injected
    /// (a pod injected again with nothing changed).
    pub patch: Patch,
    /// Problems with the pod's annotations that were worked around (the defaults were used).
    pub warnings: Vec<String>,
}

/// The `sidecar.istio.io/status` annotation, field for field as Istio writes it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// Injected init containers.
    pub init_containers: Option<Vec<String>>,
    /// Injected containers.
    pub containers: Option<Vec<String>>,
    /// Injected volumes.
    pub volumes: Option<Vec<String>>,
    /// Image pull secrets the injection adds (the `imagePullSecrets` setting).
    pub image_pull_secrets: Option<Vec<String>>,
    /// The revision that injected.
    #[serde(default)]
    pub revision: String,
}

/// The resource annotations; the `gateway` template sets resources only from them.
const RESOURCE_ANNOTATIONS: [&str; 4] = [
    ANNOTATION_PROXY_CPU,
    ANNOTATION_PROXY_MEMORY,
    ANNOTATION_PROXY_CPU_LIMIT,
    ANNOTATION_PROXY_MEMORY_LIMIT,
];

/// The annotations that shape traffic capture, which the `gateway` template does not use.
const CAPTURE_ANNOTATIONS: [&str; 11] = [
    ANNOTATION_INTERCEPTION_MODE,
    ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
    ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
    ANNOTATION_INCLUDE_INBOUND_PORTS,
    ANNOTATION_EXCLUDE_INBOUND_PORTS,
    ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
    ANNOTATION_INCLUDE_OUTBOUND_PORTS,
    ANNOTATION_EXCLUDE_INTERFACES,
    ANNOTATION_KUBEVIRT_INTERFACES,
    ANNOTATION_REROUTE_VIRTUAL_INTERFACES,
    "sidecar.istio.io/capNetBindService",
];

/// Builds the injection patch for `pod` (which [`crate::decide()`] said to inject).
///
/// Refuses the pod when one of the annotations Istio's injector validates is invalid, all of
/// them named at once ([`crate::annotations`]): the traffic annotations ([`crate::traffic`]),
/// the status port and readiness probe ([`crate::readiness`]), the sidecar's resources
/// ([`crate::resources`]) and image, its user volumes and mounts ([`crate::user_volumes`]),
/// `prometheus.istio.io/merge-metrics` ([`crate::prometheus`]), the template
/// ([`crate::templates`]), `sidecar.istio.io/nativeSidecar` ([`crate::native`]) and
/// `proxy.istio.io/overrides` ([`crate::overlay`]); so does a custom template that cannot be
/// merged onto this pod ([`crate::custom_templates`]). Any other bad annotation adds a warning
/// and its default is used.
///
/// The patch is against the pod as typed; [`inject_onto`] makes it against the object as the
/// API server sent it.
pub fn inject(pod: &Pod, settings: &InjectionSettings) -> Result<Injection, InvalidAnnotations> {
    inject_onto(pod, None, settings)
}

/// [`inject`], with the patch against `raw`, the pod object as the API server sent it (which
/// `pod` was read from): see [`crate::patch::rebase`].
pub fn inject_onto(
    pod: &Pod,
    raw: Option<&Value>,
    settings: &InjectionSettings,
) -> Result<Injection, InvalidAnnotations> {
    let mut warnings = Vec::new();

    // --- a previous injection is stripped ------------------------------------------------
    let stripped = crate::reinject::strip(pod, &mut warnings);
    let mut base = stripped.pod.clone();
    let annotations = base.metadata.annotations.clone().unwrap_or_default();

    // --- the annotations Istio validates: any invalid one refuses the pod -----------------
    let mut failures = Failures::default();
    let selection = crate::templates::read(&annotations, &settings.templates, &mut failures);
    let template = selection.template;
    let custom: Vec<(&str, &Fragment)> = selection
        .custom
        .iter()
        .filter_map(|n| settings.templates.get_key_value(n.as_str()))
        .map(|(n, f)| (n.as_str(), f))
        .collect();
    let templates_value = annotations
        .get(ANNOTATION_TEMPLATES)
        .map(String::as_str)
        .unwrap_or_default();
    let gateway = template == Template::Gateway;
    let native_choice = crate::native::annotation(&annotations, &mut failures);
    let recorded = recorded_overrides(&annotations, &mut failures);
    let traffic = crate::traffic::read(&annotations, &mut failures);
    let readiness = crate::readiness::resolve(&annotations, settings, &mut failures);
    crate::readiness::application_ports(&annotations, &mut failures, &mut warnings);
    let resources =
        crate::resources::resolve(&annotations, &settings.proxy_resources, &mut failures);
    let image = proxy_image(&annotations, settings, &mut failures);
    let merge_switch = crate::prometheus::switch(&annotations, &mut failures);
    let options =
        crate::proxy_config::resolve(&annotations, settings, &mut warnings, &mut failures);
    // The pod's annotation, else the ProxyConfig's (the pod's proxy.istio.io/config over the
    // mesh's), as Istio's template reads it.
    let mode = if gateway {
        InterceptionMode::Redirect
    } else {
        traffic.mode.unwrap_or(options.interception_mode)
    };
    // The pod's own istio-proxy and istio-init: overlays of what is injected (istio-init only
    // when one is injected; else it stays the pod's own init container).
    let injects_init = !gateway && mode != InterceptionMode::None;
    let overlays = overlays(&mut base, &recorded, injects_init, &mut warnings);
    let mut volumes = injected_volumes(settings);
    let mut mounts = sidecar_mounts(settings);
    let user = {
        let pod_volumes: Vec<&str> = base
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| v.name.as_str())
            .collect();
        let injected: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        let paths: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        crate::user_volumes::resolve(&annotations, &pod_volumes, &injected, &paths, &mut failures)
    };
    failures.into_result(())?;
    volumes.extend(user.volumes);
    mounts.extend(user.mounts);

    // --- per-pod options that are warned about ----------------------------------------------
    warnings.extend(traffic.warnings.iter().cloned());
    if gateway {
        for name in CAPTURE_ANNOTATIONS
            .iter()
            .filter(|a| annotations.contains_key(**a))
        {
            warnings.push(format!(
                "annotation {name} ignored: the gateway template captures no traffic"
            ));
        }
    }
    let native = crate::native::decide(native_choice, template, settings, &mut warnings);
    // With a native sidecar the startup probe holds the app; the gateway has no app to hold.
    let hold = options.hold_application_until_proxy_starts && !native && !gateway;
    let app_containers: Vec<Container> = base
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    check_app_ports(
        &app_containers,
        settings,
        readiness.status_port,
        &mut warnings,
    );
    let probers = if readiness.status_port != 0 {
        crate::probes::rewrite_in_place(&mut base, settings, readiness.status_port, &mut warnings)
    } else {
        // Nothing serves /app-health: Istio would point the probes at port 0, which the API
        // server refuses; they are left as they are.
        let mut probed = base.clone();
        if !crate::probes::rewrite_in_place(&mut probed, settings, 0, &mut Vec::new())
            .0
            .is_empty()
        {
            warnings.push(format!(
                "app probes not rewritten: {ANNOTATION_STATUS_PORT} is 0, so the sidecar serves \
                 no /app-health (they may fail under mTLS STRICT)"
            ));
        }
        Default::default()
    };
    let merge = crate::prometheus::merge(
        &annotations,
        merge_switch.unwrap_or(settings.enable_prometheus_merge),
        readiness.status_port,
        &mut warnings,
    );

    // --- containers -----------------------------------------------------------------------
    // NONE: nothing is captured, so there is no istio-init at all (Istio's template); the
    // gateway template has none either.
    let mut init = injects_init.then(|| {
        init_container(
            &traffic,
            mode,
            settings,
            &options,
            &image,
            readiness.status_port,
        )
    });
    // The gateway template sets resources only from the pod's annotations (its chart gives the
    // pod's own istio-proxy its resources); the sidecar's are the settings' otherwise.
    let resources = (!gateway
        || RESOURCE_ANNOTATIONS
            .iter()
            .any(|a| annotations.contains_key(*a)))
    .then_some(resources);
    let overlay_ports: Vec<ContainerPort> = overlays
        .proxy
        .iter()
        .flat_map(|c| c.ports.iter().flatten().cloned())
        .collect();
    let mut sidecar = sidecar_container(
        &app_containers,
        &overlay_ports,
        settings,
        &options,
        mode,
        Sidecar {
            image,
            resources,
            readiness,
            mounts,
            gateway,
            workload: rustmesh_api::workload::workload_name(pod),
        },
    );
    let args = sidecar.args.get_or_insert_with(Vec::new);
    if let Some(n) = options.concurrency {
        // As Istio's template: only a positive value is passed; otherwise the proxy uses the
        // cores it may run on (its CPU affinity and cgroup limit).
        args.extend(["--concurrency".to_owned(), n.to_string()]);
    }
    if let Some(d) = options.termination_drain_duration {
        args.extend([
            "--termination-drain-duration".to_owned(),
            rustmesh_xds::Duration(d).to_string(),
        ]);
    }
    if readiness.status_port != well_known::AGENT_STATUS_PORT {
        // The pod's (or the setting's) status port; 0 turns the sidecar's status server off.
        args.extend([
            "--status-port".to_owned(),
            readiness.status_port.to_string(),
        ]);
    }
    if native {
        sidecar.restart_policy = Some("Always".to_owned());
        sidecar.startup_probe = Some(Probe {
            http_get: Some(readiness_get(settings)),
            initial_delay_seconds: Some(0),
            period_seconds: Some(1),
            timeout_seconds: Some(3),
            failure_threshold: Some(600),
            ..Default::default()
        });
        // As Istio's template: the pod starting to stop starts the sidecar's drain, while the
        // app still runs (the kubelet stops a native sidecar only after the app containers).
        // Without a status port nothing serves /drain; SIGTERM then drains, as before.
        if readiness.status_port != 0 {
            sidecar.lifecycle = Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(drain_command(readiness.status_port)),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    } else if hold {
        sidecar.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(wait_command(settings)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    // The custom templates' entries for the injected containers, in order, then the pod's own
    // containers over the result (Istio re-applies the pod's containers after its templates),
    // then what Istio adds after merging.
    let mut merged = Failures::default();
    let (mut proxy_templated, mut init_templated) = (false, false);
    for (name, fragment) in &custom {
        for entry in fragment.containers_named(SIDECAR_CONTAINER_NAME) {
            merge_template(&mut sidecar, entry, name, templates_value, &mut merged);
            proxy_templated = true;
        }
        if let Some(init) = init.as_mut() {
            for entry in fragment.containers_named(INIT_CONTAINER_NAME) {
                merge_template(init, entry, name, templates_value, &mut merged);
                init_templated = true;
            }
        }
    }
    let custom_names = || {
        custom
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(overlay) = &overlays.proxy {
        merge_onto(&mut sidecar, overlay, &mut warnings);
        adjust_proxy_user(overlay, mode, &mut sidecar, init.as_mut(), &mut warnings);
    }
    if let (Some(overlay), Some(init)) = (&overlays.init, init.as_mut()) {
        merge_onto(init, overlay, &mut warnings);
    }
    // A request of the pod's own container (or of a custom template) over an injected limit (or
    // the other way round): refused here, naming both, rather than by the API server.
    for (c, own, templated) in [
        (Some(&sidecar), overlays.proxy.is_some(), proxy_templated),
        (init.as_ref(), overlays.init.is_some(), init_templated),
    ] {
        let Some(c) = c else {
            continue;
        };
        let what = if own {
            format!(
                "container '{}' of the pod, merged onto the injected one",
                c.name
            )
        } else if templated {
            format!(
                "container '{}', merged with the custom template(s) {}",
                c.name,
                custom_names()
            )
        } else {
            continue;
        };
        for (resource, req, lim) in c
            .resources
            .as_ref()
            .map(crate::resources::requests_above_limits)
            .unwrap_or_default()
        {
            merged.add_line(
                &c.name,
                format!(
                    "{what}: the {resource} request {req} is more than the {resource} limit \
                     {lim} (Kubernetes refuses a request above its limit; set both)"
                ),
            );
        }
    }
    merged.into_result(())?;
    if !probers.0.is_empty() {
        set_env(&mut sidecar, probe::APP_PROBERS_ENV, probers.to_json());
    }
    if let Some(value) = merge.as_ref().and_then(|m| m.env.clone()) {
        set_env(&mut sidecar, ENV_PROMETHEUS_ANNOTATIONS, value);
    }

    let mut init_names = Vec::new();
    if init.is_some() {
        init_names.push(INIT_CONTAINER_NAME.to_owned());
    }
    if native {
        init_names.push(SIDECAR_CONTAINER_NAME.to_owned());
    }
    let pull_secrets = &settings.image_pull_secrets;
    let has_init = init.is_some();
    let mut status = SidecarStatus {
        // As Istio writes it: `null` when nothing is injected there (NONE without native).
        init_containers: (!init_names.is_empty()).then_some(init_names),
        containers: (!native).then(|| vec![SIDECAR_CONTAINER_NAME.to_owned()]),
        volumes: Some(volumes.iter().map(|v| v.name.clone()).collect()),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| pull_secrets.clone()),
        revision: settings.revision.clone(),
    };

    // --- the injected pod -----------------------------------------------------------------
    let mut out = base;
    let labels = out.metadata.labels.get_or_insert_with(BTreeMap::new);
    let original_labels = labels.clone();
    // As Istio's template: the pod's own non-empty value wins (an empty one is replaced). The
    // gateway template sets no tlsMode label.
    if !gateway {
        set(
            labels,
            LABEL_TLS_MODE,
            "istio".to_owned(),
            Set::IfAbsentOrEmpty,
        );
    }
    set(labels, LABEL_REV, settings.revision.clone(), Set::IfAbsent);
    if let Some(name) = crate::canonical::canonical_name(pod, &mut warnings) {
        set(labels, LABEL_CANONICAL_NAME, name, Set::IfAbsentOrEmpty);
    }
    set(
        labels,
        LABEL_CANONICAL_REVISION,
        rustmesh_api::workload::canonical_revision(&original_labels),
        Set::IfAbsentOrEmpty,
    );

    let annotations_out = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    // The gateway template names a default container only when there is exactly one app
    // container; the sidecar template the first of them.
    if let Some(first) = app_containers.first()
        && (!gateway || app_containers.len() == 1)
    {
        set(
            annotations_out,
            ANNOTATION_DEFAULT_CONTAINER,
            first.name.clone(),
            Set::IfAbsent,
        );
    }
    if let Some(merge) = merge {
        for k in &merge.remove {
            annotations_out.remove(k);
        }
        for (k, v) in merge.set {
            set(annotations_out, k, v, Set::Always);
        }
    }
    if overlays.proxy.is_some() || overlays.init.is_some() {
        let recorded = crate::overlay::overrides(&overlays, native);
        set(
            annotations_out,
            ANNOTATION_OVERRIDES,
            recorded.to_json(),
            Set::Always,
        );
    }

    let spec = out.spec.get_or_insert_with(Default::default);
    // istio-init runs first of all init containers; a native sidecar right after it, so that
    // the app's own init containers already have the proxy.
    let mut inits: Vec<Container> = init.into_iter().collect();
    if native {
        inits.push(sidecar.clone());
    }
    if !inits.is_empty() {
        inits.extend(spec.init_containers.take().unwrap_or_default());
        spec.init_containers = Some(inits);
    }
    if !native {
        // First container: started first by the kubelet (and held with postStart when asked).
        spec.containers.insert(0, sidecar);
    }
    // The pod's volumes in their order (a volume the previous injection added goes, unless it
    // is not injected again and a container still mounts it), then the injected ones.
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let listed = stripped.volumes();
    // The custom templates' volumes are injected again too (appended by the templates below).
    let injected: Vec<&str> = volumes
        .iter()
        .map(|v| v.name.as_str())
        .chain(custom.iter().flat_map(|(_, f)| f.volume_names()))
        .collect();
    let kept: Vec<Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| {
            !listed.contains(&v.name)
                || (!injected.contains(&v.name.as_str())
                    && crate::reinject::keep_listed_volume(&v.name, &all))
        })
        .cloned()
        .collect();
    let mut all_volumes = kept;
    all_volumes.extend(volumes);
    spec.volumes = Some(all_volumes);
    // The settings' pull secrets, merged by name with the pod's own (Istio's strategic merge).
    for name in pull_secrets {
        let secrets = spec.image_pull_secrets.get_or_insert_with(Vec::new);
        if !secrets.iter().any(|r| r.name == *name) {
            secrets.push(LocalObjectReference { name: name.clone() });
        }
    }

    // --- the custom templates, in order, merged onto the injected pod -----------------------
    let mut added = crate::custom_templates::Added::default();
    let mut templated = Failures::default();
    let injected_containers: Vec<&str> = std::iter::once(SIDECAR_CONTAINER_NAME)
        .chain(has_init.then_some(INIT_CONTAINER_NAME))
        .collect();
    let mut touched = Vec::new();
    for (name, fragment) in &custom {
        match crate::custom_templates::apply(&mut out, fragment, &injected_containers, &mut added) {
            Ok(names) => touched.extend(names),
            Err(e) => templated.add(
                ANNOTATION_TEMPLATES,
                templates_value,
                format!("template {name:?}: {e}"),
            ),
        }
    }
    // Checked once all are merged: a later template may set what an earlier one left over.
    check_templated(&out, &touched, &custom_names(), &mut templated);
    templated.into_result(())?;
    add_names(&mut status.init_containers, added.init_containers);
    add_names(&mut status.containers, added.containers);
    add_names(&mut status.volumes, added.volumes);
    add_names(&mut status.image_pull_secrets, added.image_pull_secrets);
    set(
        out.metadata.annotations.get_or_insert_with(BTreeMap::new),
        ANNOTATION_STATUS,
        serde_json::to_string(&status).unwrap_or_default(),
        Set::Always,
    );

    let typed = to_value(pod);
    let ops = crate::patch::rebase(raw.unwrap_or(&typed), &typed, &to_value(&out));
    Ok(Injection {
        patch: Patch(ops),
        warnings,
    })
}

/// Merges a custom template's entry for an injected container onto it
/// ([`crate::overlay::merge_container_value`]); one that cannot be merged refuses the pod.
fn merge_template(
    injected: &mut Container,
    entry: &Value,
    template: &str,
    value: &str,
    failures: &mut Failures,
) {
    match crate::overlay::merge_container_value(injected, entry) {
        Ok(merged) => *injected = merged,
        Err(e) => failures.add(
            ANNOTATION_TEMPLATES,
            value,
            format!(
                "template {template:?}: container {:?} cannot be merged: {e}",
                injected.name
            ),
        ),
    }
}

/// The containers the custom templates (`templates`, their names as a list) merged or added,
/// checked as the pod's own overlays are: a request above its limit refuses the pod, naming the
/// templates.
fn check_templated(pod: &Pod, touched: &[String], templates: &str, failures: &mut Failures) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| touched.contains(&c.name))
    {
        for (resource, req, lim) in c
            .resources
            .as_ref()
            .map(crate::resources::requests_above_limits)
            .unwrap_or_default()
        {
            failures.add_line(
                &c.name,
                format!(
                    "container '{}', merged with the custom template(s) {templates}: the \
                     {resource} request {req} is more than the {resource} limit {lim} \
                     (Kubernetes refuses a request above its limit; set both)",
                    c.name
                ),
            );
        }
    }
}

/// Adds `names` to a list of `sidecar.istio.io/status` (made when absent), each once.
fn add_names(list: &mut Option<Vec<String>>, names: Vec<String>) {
    for name in names {
        let l = list.get_or_insert_with(Vec::new);
        if !l.contains(&name) {
            l.push(name);
        }
    }
}

/// The pod's `proxy.istio.io/overrides` (what it declared for `istio-proxy`/`istio-init` when
/// injected before); an unreadable one is added to `failures`.
fn recorded_overrides(
    annotations: &BTreeMap<String, String>,
    failures: &mut Failures,
) -> Overrides {
    let Some(value) = annotations.get(ANNOTATION_OVERRIDES) else {
        return Overrides::default();
    };
    Overrides::parse(value).unwrap_or_else(|why| {
        // The value is a JSON document of containers: shown shortened.
        let shown: String = value.chars().take(120).collect();
        let shown = if shown.len() < value.len() {
            format!("{shown}...")
        } else {
            shown
        };
        failures.add(ANNOTATION_OVERRIDES, &shown, why);
        Overrides::default()
    })
}

/// The overlays: the pod's own `istio-proxy` and `istio-init` (taken out of `pod`), else those
/// recorded in `proxy.istio.io/overrides` by a previous injection (Istio's
/// `reinsertOverrides`).
fn overlays(
    pod: &mut Pod,
    recorded: &Overrides,
    injects_init: bool,
    warnings: &mut Vec<String>,
) -> Overlays {
    let own = crate::overlay::take(pod, injects_init, warnings);
    if !injects_init
        && pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .any(|c| c.name == INIT_CONTAINER_NAME)
    {
        warnings.push(format!(
            "container {INIT_CONTAINER_NAME:?} is kept as the pod's own: no {INIT_CONTAINER_NAME} \
             is injected (gateway template or interceptionMode NONE) to merge it onto"
        ));
    }
    for c in recorded.containers.iter().chain(&recorded.init_containers) {
        if c.name != SIDECAR_CONTAINER_NAME && c.name != INIT_CONTAINER_NAME {
            warnings.push(format!(
                "annotation {ANNOTATION_OVERRIDES}: container {:?} is not one rustmesh injects; \
                 ignored",
                c.name
            ));
        }
    }
    Overlays {
        proxy: own
            .proxy
            .or_else(|| recorded.get(SIDECAR_CONTAINER_NAME).cloned()),
        init: own.init.or_else(|| {
            injects_init
                .then(|| recorded.get(INIT_CONTAINER_NAME).cloned())
                .flatten()
        }),
    }
}

/// Merges the pod's own container onto an injected one ([`crate::overlay::merge_container`]);
/// one that cannot be merged is reported and the injected one kept.
fn merge_onto(injected: &mut Container, overlay: &Container, warnings: &mut Vec<String>) {
    match crate::overlay::merge_container(injected, overlay) {
        Ok(merged) => *injected = merged,
        Err(e) => warnings.push(format!(
            "the pod's container {:?} could not be merged onto the injected one ({e}); the \
             injected one is used as it is",
            overlay.name
        )),
    }
}

/// Istio's `adjustInitContainerUser`: the pod's `istio-proxy` running as another user makes
/// `istio-init` exempt that user's traffic from capture (`-u`); under TPROXY the sidecar must
/// stay root, so the pod's `runAsUser` is overridden (with a warning).
fn adjust_proxy_user(
    overlay: &Container,
    mode: InterceptionMode,
    sidecar: &mut Container,
    init: Option<&mut Container>,
    warnings: &mut Vec<String>,
) {
    let Some(uid) = overlay
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
    else {
        return;
    };
    if mode == InterceptionMode::Tproxy {
        if uid != 0 {
            warnings.push(format!(
                "runAsUser {uid} of the pod's {SIDECAR_CONTAINER_NAME} ignored: under TPROXY the \
                 sidecar runs as root (uid 0), as in Istio"
            ));
        }
        if let Some(sc) = sidecar.security_context.as_mut() {
            sc.run_as_user = Some(0);
        }
        return;
    }
    // The capture rules must not capture the proxy's own traffic; uid 0 is never exempted.
    if uid == 0 {
        return;
    }
    if let Some(args) = init.and_then(|c| c.args.as_mut())
        && let Some(at) = args.iter().position(|a| a == "-u")
        && at + 1 < args.len()
    {
        args[at + 1] = uid.to_string();
    }
}

/// Sets an environment variable of `c`, replacing one of that name.
fn set_env(c: &mut Container, name: &str, value: String) {
    let env = c.env.get_or_insert_with(Vec::new);
    let var = EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    match env.iter_mut().find(|e| e.name == name) {
        Some(e) => *e = var,
        None => env.push(var),
    }
}

/// `istio-proxy`'s image: `sidecar.istio.io/proxyImage` when set (Istio's template takes it for
/// `istio-init` too), else the `image` setting. Refused when empty or with whitespace (the API
/// server would refuse the pod). Unlike Istio, a value without `/` is used as written (Istio
/// ignores it and composes its own image from hub and tag).
pub fn proxy_image(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
    failures: &mut Failures,
) -> String {
    let Some(value) = annotations.get(ANNOTATION_PROXY_IMAGE) else {
        return settings.image.clone();
    };
    let why = if value.is_empty() {
        "an image name is not empty"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "an image name has no whitespace or control characters"
    } else {
        return value.clone();
    };
    failures.add(ANNOTATION_PROXY_IMAGE, value, why);
    settings.image.clone()
}

/// The first volume of the pod whose name the injection would add again with these settings
/// (the API server would refuse the duplicate); a volume a previous injection added (listed
/// in the pod's `sidecar.istio.io/status`) is not one: it is replaced.
pub fn conflicting_volume(pod: &Pod, settings: &InjectionSettings) -> Option<String> {
    let ours: Vec<String> = injected_volumes(settings)
        .into_iter()
        .map(|v| v.name)
        .collect();
    let listed = crate::reinject::status(pod)
        .and_then(|s| s.volumes)
        .unwrap_or_default();
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| ours.contains(&v.name) && !listed.contains(&v.name))
        .map(|v| v.name.clone())
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Serialising k8s-openapi types into a Value cannot fail (string keys, no non-finite floats).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// When an entry of a label or annotation map is written over the pod's own value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    /// Only when the pod has no such key (the user's value wins).
    IfAbsent,
    /// When the pod has no such key or an empty value (Istio's template `default`: empty counts
    /// as unset).
    IfAbsentOrEmpty,
    /// Always (replacing the pod's).
    Always,
}

/// Sets `key` of a label or annotation map as `how` says.
fn set(map: &mut BTreeMap<String, String>, key: &str, value: String, how: Set) {
    let write = match (how, map.get(key)) {
        (_, None) | (Set::Always, _) => true,
        (Set::IfAbsentOrEmpty, Some(old)) => old.is_empty(),
        (Set::IfAbsent, Some(_)) => false,
    };
    if write {
        map.insert(key.to_owned(), value);
    }
}

/// `istio-init`: programs the capture rules with `istio-iptables`, as root with NET_ADMIN/NET_RAW.
/// Its arguments are Istio's template's, from the pod's checked traffic annotations; its
/// environment carries the `proxyMetadata` the capture step reads (the keys of
/// [`crate::proxy_config::METADATA`] marked `init`: DNS capture, invalid-packet drop, owner
/// groups, the IPv4 loopback range).
fn init_container(
    traffic: &Traffic,
    mode: InterceptionMode,
    settings: &InjectionSettings,
    options: &crate::proxy_config::ProxyOptions,
    image: &str,
    status_port: u16,
) -> Container {
    // The proxy's own ports are always excluded (its status port unless it has none); the
    // user's are appended, as Istio does.
    let mut exclude_inbound = vec![settings.prometheus_port, settings.health_port];
    if status_port != 0 {
        exclude_inbound.push(status_port);
    }
    for p in &traffic.exclude_inbound_ports {
        if !exclude_inbound.contains(p) {
            exclude_inbound.push(*p);
        }
    }

    let mut args: Vec<String> = vec![
        "istio-iptables".into(),
        "-p".into(),
        settings.outbound_port.to_string(),
        "-z".into(),
        settings.inbound_port.to_string(),
        "-u".into(),
        well_known::PROXY_UID.to_string(),
        "-m".into(),
        mode.as_str().into(),
        "-i".into(),
        traffic.include_outbound_ip_ranges.clone(),
        "-x".into(),
        traffic.exclude_outbound_ip_ranges.clone(),
        "-b".into(),
        traffic.include_inbound_ports.clone(),
        "-d".into(),
        values::join(&exclude_inbound),
    ];
    // Each only when annotated, in the order of Istio's template.
    for (flag, value) in [
        ("-q", &traffic.include_outbound_ports),
        ("-o", &traffic.exclude_outbound_ports),
        ("-k", &traffic.reroute_virtual_interfaces),
        ("-c", &traffic.exclude_interfaces),
    ] {
        if let Some(value) = value {
            args.extend([flag.to_owned(), value.clone()]);
        }
    }
    args.push(format!("--log_output_level={}", settings.log_level));

    let env: Vec<EnvVar> = options
        .env
        .iter()
        .filter(|(name, _)| crate::proxy_config::metadata(name).is_some_and(|m| m.init))
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect();

    Container {
        name: INIT_CONTAINER_NAME.to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: pull_policy(settings),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        resources: Some(crate::resources::of_settings(&settings.init_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container runtime's default seccomp profile, on both injected containers (least
/// privilege; Istio's template leaves it to the pod). A container-level profile wins over the
/// pod's, so a pod that runs its app `Unconfined` still gets it here.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// What the pod's annotations decided about `istio-proxy`, all checked.
struct Sidecar {
    image: String,
    /// None: no resources (the gateway template without resource annotations).
    resources: Option<ResourceRequirements>,
    readiness: crate::readiness::Readiness,
    /// Its own mounts, then the pod's `userVolumeMount`s.
    mounts: Vec<VolumeMount>,
    /// The gateway template: a standalone proxy.
    gateway: bool,
    /// The workload the pod belongs to (Istio's `DeploymentMeta.Name`), if it has one.
    workload: Option<String>,
}

/// `istio-proxy`: the sidecar itself (or, with the gateway template, the pod's proxy).
/// `overlay_ports` are those of the pod's own `istio-proxy`, which Istio's
/// `ISTIO_META_POD_PORTS` lists too (a gateway declares its ports there).
fn sidecar_container(
    app_containers: &[Container],
    overlay_ports: &[ContainerPort],
    settings: &InjectionSettings,
    options: &crate::proxy_config::ProxyOptions,
    mode: InterceptionMode,
    parts: Sidecar,
) -> Container {
    let pod_ports: Vec<&ContainerPort> = app_containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .chain(overlay_ports)
        .collect();
    let app_names: Vec<&str> = app_containers.iter().map(|c| c.name.as_str()).collect();

    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("HOST_IP", "status.hostIP"),
        plain(
            "ISTIO_META_POD_PORTS",
            serde_json::to_string(&pod_ports).unwrap_or_else(|_| "[]".into()),
        ),
        plain("ISTIO_META_APP_CONTAINERS", app_names.join(",")),
        plain("ISTIO_META_CLUSTER_ID", settings.cluster_id.clone()),
        plain("ISTIO_META_MESH_ID", settings.mesh_id.clone()),
        plain("ISTIO_META_INTERCEPTION_MODE", mode.as_str().to_owned()),
        plain("PROXY_CONFIGMAP", well_known::PROXY_CONFIGMAP.to_owned()),
    ];
    // As Istio's template, only when the pod has a workload: the sidecar's own name in its
    // metrics' `source_workload`/`destination_workload` and its peer metadata (the proxy's
    // guess from the pod name is wrong for a StatefulSet's or a Job's pods).
    if let Some(workload) = &parts.workload {
        env.push(plain("ISTIO_META_WORKLOAD_NAME", workload.clone()));
    }
    if let Some(pc) = &options.annotation_json {
        env.push(plain("PROXY_CONFIG", pc.clone()));
    }
    // `proxyMetadata`, as Istio's template sets it: environment variables of the proxy.
    for (name, value) in &options.env {
        env.push(plain(name, value.clone()));
    }
    if !settings.ca_address.is_empty() {
        env.push(plain("CA_ADDR", settings.ca_address.clone()));
        env.push(plain("TRUST_DOMAIN", settings.trust_domain.clone()));
    }
    if parts.gateway {
        env.push(plain(ENV_ROUTER_MODE, DEFAULT_ROUTER_MODE.to_owned()));
    }

    Container {
        name: SIDECAR_CONTAINER_NAME.to_owned(),
        image: Some(parts.image),
        image_pull_policy: pull_policy(settings),
        // A gateway's proxy is Istio's `proxy router`: it binds its Gateway listeners itself.
        args: Some(if parts.gateway {
            vec![
                "run".into(),
                well_known::ROUTER_ARGS[0].into(),
                well_known::ROUTER_ARGS[1].into(),
                "--config-dir".into(),
                well_known::PROXY_CONFIG_MOUNT.into(),
            ]
        } else {
            vec![
                "run".into(),
                "--config-dir".into(),
                well_known::PROXY_CONFIG_MOUNT.into(),
            ]
        }),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            container_port: i32::from(settings.prometheus_port),
            name: Some(PROMETHEUS_PORT_NAME.to_owned()),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // No status port, no readiness probe (Istio's template).
        readiness_probe: parts.readiness.probe().then(|| Probe {
            http_get: Some(readiness_get(settings)),
            initial_delay_seconds: Some(parts.readiness.initial_delay_seconds),
            period_seconds: Some(parts.readiness.period_seconds),
            timeout_seconds: Some(crate::readiness::TIMEOUT_SECONDS),
            failure_threshold: Some(parts.readiness.failure_threshold),
            ..Default::default()
        }),
        resources: parts.resources,
        security_context: Some(sidecar_security_context(mode)),
        volume_mounts: Some(parts.mounts),
        ..Default::default()
    }
}

/// `istio-proxy`'s own mounts.
fn sidecar_mounts(settings: &InjectionSettings) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        mount(VOLUME_ENVOY, ENVOY_SCRATCH_MOUNT, false),
        mount(VOLUME_PODINFO, well_known::POD_INFO_MOUNT, false),
        mount(
            well_known::PROXY_CONFIGMAP,
            well_known::PROXY_CONFIG_MOUNT,
            true,
        ),
    ];
    if !settings.ca_address.is_empty() {
        mounts.push(mount(VOLUME_TOKEN, ca::TOKEN_MOUNT, true));
        mounts.push(mount(VOLUME_ROOT_CERT, ca::ROOT_CERT_MOUNT, true));
    }
    mounts
}

/// `istio-proxy`'s security context. As Istio's template: under TPROXY the sidecar runs as root
/// with group 1337 (the capture rules skip its traffic by that group) and `NET_ADMIN`, which
/// binding its inbound listener transparently (`IP_TRANSPARENT`) needs; otherwise as 1337 with no
/// capability. Everything else is least privilege in every mode.
fn sidecar_security_context(mode: InterceptionMode) -> SecurityContext {
    let tproxy = mode == InterceptionMode::Tproxy;
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: tproxy.then(|| vec!["NET_ADMIN".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_group: Some(i64::from(well_known::PROXY_GID)),
        run_as_non_root: Some(!tproxy),
        run_as_user: Some(if tproxy {
            0
        } else {
            i64::from(well_known::PROXY_UID)
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// `proxy wait` (implemented in the proxy crate: polls `http://127.0.0.1:15021/healthz/ready`
/// until 200), with `--url` only when the readiness port is not the default.
fn wait_command(settings: &InjectionSettings) -> Vec<String> {
    let mut cmd: Vec<String> = WAIT_COMMAND.iter().map(|s| s.to_string()).collect();
    if settings.health_port != well_known::HEALTH_PORT {
        cmd.push(format!(
            "--url=http://127.0.0.1:{}{READINESS_PATH}",
            settings.health_port
        ));
    }
    cmd
}

/// A native sidecar's `preStop` command: `proxy request --debug-port=<status port> POST drain`
/// (Istio's `pilot-agent request --debug-port=<status port> POST drain`).
fn drain_command(status_port: u16) -> Vec<String> {
    let mut cmd: Vec<String> = REQUEST_COMMAND.iter().map(|s| s.to_string()).collect();
    cmd.push(format!("--debug-port={status_port}"));
    cmd.extend(DRAIN_REQUEST.iter().map(|s| s.to_string()));
    cmd
}

fn readiness_get(settings: &InjectionSettings) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(READINESS_PATH.to_owned()),
        port: IntOrString::Int(i32::from(settings.health_port)),
        scheme: Some("HTTP".to_owned()),
        ..Default::default()
    }
}

fn injected_volumes(settings: &InjectionSettings) -> Vec<Volume> {
    let file = |path: &str, field: &str| DownwardAPIVolumeFile {
        path: path.to_owned(),
        field_ref: Some(ObjectFieldSelector {
            api_version: Some("v1".to_owned()),
            field_path: field.to_owned(),
        }),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: VOLUME_ENVOY.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_PODINFO.to_owned(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    file("labels", "metadata.labels"),
                    file("annotations", "metadata.annotations"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: well_known::PROXY_CONFIGMAP.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: well_known::PROXY_CONFIGMAP.to_owned(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if !settings.ca_address.is_empty() {
        volumes.push(Volume {
            name: VOLUME_TOKEN.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(ca::TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(ca::TOKEN_EXPIRATION_SECONDS),
                        path: ca::TOKEN_FILE.to_owned(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        volumes.push(Volume {
            name: VOLUME_ROOT_CERT.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: well_known::CA_ROOT_CONFIGMAP.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

fn pull_policy(settings: &InjectionSettings) -> Option<String> {
    (!settings.image_pull_policy.is_empty()).then(|| settings.image_pull_policy.clone())
}

/// Warns when an app container declares a port the sidecar owns: it would fail to bind, or be
/// bypassed by the capture rules.
fn check_app_ports(
    containers: &[Container],
    settings: &InjectionSettings,
    status_port: u16,
    warnings: &mut Vec<String>,
) {
    let reserved = [
        (settings.outbound_port, "outbound capture"),
        (settings.inbound_port, "inbound capture"),
        (well_known::ADMIN_PORT, "admin"),
        (status_port, "status"),
        (settings.health_port, "readiness"),
        (settings.prometheus_port, "Prometheus"),
        (well_known::DNS_PORT, "DNS"),
    ];
    for c in containers {
        for p in c.ports.iter().flatten() {
            if let Some((_, what)) = reserved
                .iter()
                .find(|(r, _)| *r != 0 && i32::from(*r) == p.container_port)
            {
                warnings.push(format!(
                    "container {:?} port {} is the sidecar's {what} port",
                    c.name, p.container_port
                ));
            }
        }
    }
}

/// Convenience for tests and callers: the value of `json!` for a patch, as the API server sees it.
pub fn patch_json(patch: &Patch) -> Value {
    serde_json::to_value(patch).unwrap_or_else(|_| json!([]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::PatchOperation;

    #[test]
    fn wait_command_follows_the_health_port() {
        let default = InjectionSettings::default();
        assert_eq!(wait_command(&default), ["proxy", "wait"]);
        let custom = InjectionSettings {
            health_port: 16021,
            ..InjectionSettings::default()
        };
        assert_eq!(
            wait_command(&custom),
            [
                "proxy",
                "wait",
                "--url=http://127.0.0.1:16021/healthz/ready"
            ]
        );
    }

    fn pod_with_proxy_config(config: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {ANNOTATION_PROXY_CONFIG: config}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        }))
        .unwrap()
    }

    fn sidecar_of(inj: &Injection) -> Container {
        let add = inj
            .patch
            .0
            .iter()
            .find_map(|op| match op {
                PatchOperation::Add(a) if a.path.as_str().starts_with("/spec/containers") => {
                    Some(a.value.clone())
                }
                _ => None,
            })
            .expect("the sidecar is added");
        serde_json::from_value(add).unwrap()
    }

    #[test]
    fn drain_settings_reach_the_sidecar() {
        let settings = InjectionSettings {
            proxy_metadata: [("MINIMUM_DRAIN_DURATION".to_owned(), "10s".to_owned())].into(),
            ..InjectionSettings::default()
        };
        let inj = inject(
            &pod_with_proxy_config(
                "terminationDrainDuration: 20s\nproxyMetadata: {EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"}\ntracing: {}",
            ),
            &settings,
        ).unwrap();
        let c = sidecar_of(&inj);
        let args = c.args.unwrap_or_default();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--termination-drain-duration" && w[1] == "20s"),
            "{args:?}"
        );
        let env: BTreeMap<String, String> = c
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        assert_eq!(env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true");
        assert_eq!(
            env["MINIMUM_DRAIN_DURATION"], "10s",
            "the mesh's proxyMetadata"
        );
        assert_eq!(inj.warnings.len(), 1, "{:?}", inj.warnings);
        assert!(
            inj.warnings[0].contains("tracing is not implemented"),
            "{:?}",
            inj.warnings
        );
        // Nothing said: the proxy's own 5 s, no flag.
        let plain = sidecar_of(
            &inject(&pod_with_proxy_config("{}"), &InjectionSettings::default()).unwrap(),
        );
        assert!(
            !plain
                .args
                .unwrap_or_default()
                .contains(&"--termination-drain-duration".to_owned())
        );
    }

    fn sidecar_args(inj: &Injection) -> Vec<String> {
        let add = inj
            .patch
            .0
            .iter()
            .find_map(|op| match op {
                PatchOperation::Add(a) if a.path.as_str().starts_with("/spec/containers") => {
                    Some(a.value.clone())
                }
                _ => None,
            })
            .expect("the sidecar is added");
        let c: Container = serde_json::from_value(add).unwrap();
        assert_eq!(c.name, SIDECAR_CONTAINER_NAME);
        c.args.unwrap_or_default()
    }

    #[test]
    fn concurrency_from_the_proxy_config_annotation() {
        let settings = InjectionSettings::default();
        for (config, want) in [
            ("concurrency: 2", Some("2")),
            ("{\"concurrency\": 1}", Some("1")),
            ("concurrency: 0", None), // Istio passes only a positive value
            ("holdApplicationUntilProxyStarts: true", None),
        ] {
            let inj = inject(&pod_with_proxy_config(config), &settings).unwrap();
            let args = sidecar_args(&inj);
            let got = args
                .iter()
                .position(|a| a == "--concurrency")
                .map(|i| args[i + 1].as_str());
            assert_eq!(got, want, "{config}");
            assert!(inj.warnings.is_empty(), "{config}: {:?}", inj.warnings);
        }
    }

    #[test]
    fn a_bad_concurrency_is_a_warning_and_the_default() {
        let settings = InjectionSettings::default();
        for config in [
            "concurrency: -1",
            "concurrency: two",
            "concurrency: 1.5",
            "concurrency: 100000",
        ] {
            let inj = inject(&pod_with_proxy_config(config), &settings).unwrap();
            assert!(
                !sidecar_args(&inj).contains(&"--concurrency".to_owned()),
                "{config}"
            );
            assert_eq!(inj.warnings.len(), 1, "{config}: {:?}", inj.warnings);
            assert!(
                inj.warnings[0].contains("concurrency"),
                "{:?}",
                inj.warnings
            );
        }
        // Not a mapping: one warning for the annotation, none per field.
        let inj = inject(&pod_with_proxy_config("[1, 2]"), &settings).unwrap();
        assert_eq!(inj.warnings.len(), 1, "{:?}", inj.warnings);
    }

    #[test]
    fn the_concurrency_setting_is_the_default_a_pod_overrides() {
        let settings = InjectionSettings {
            concurrency: 2,
            ..InjectionSettings::default()
        };
        let flag = |config: &str| {
            let args = sidecar_args(&inject(&pod_with_proxy_config(config), &settings).unwrap());
            let at = args.iter().position(|a| a == "--concurrency");
            at.map(|i| args[i + 1].clone())
        };
        assert_eq!(
            flag("holdApplicationUntilProxyStarts: false").as_deref(),
            Some("2")
        );
        assert_eq!(flag("concurrency: 4").as_deref(), Some("4"));
        assert_eq!(
            flag("concurrency: 0"),
            None,
            "the pod's 0 wins: the proxy's default"
        );
        assert_eq!(
            flag("concurrency: lots").as_deref(),
            Some("2"),
            "a bad value: the setting"
        );
    }

    #[test]
    fn the_proxy_image_annotation_or_the_setting() {
        let settings = InjectionSettings::default();
        let image = |pairs: &[(&str, &str)]| {
            let annotations = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut failures = Failures::default();
            let image = proxy_image(&annotations, &settings, &mut failures);
            failures.into_result(image).map_err(|e| e.0)
        };
        assert_eq!(image(&[]).unwrap(), settings.image);
        // As written, with or without a registry (Istio ignores a value without '/').
        for v in ["registry.local/proxy:debug", "proxy:1", "proxy@sha256:abc"] {
            assert_eq!(image(&[(ANNOTATION_PROXY_IMAGE, v)]).unwrap(), v);
        }
        for (bad, why) in [
            ("", "an image name is not empty"),
            ("proxy :1", "an image name has no whitespace"),
            ("proxy:1\n", "an image name has no whitespace"),
        ] {
            assert_eq!(
                image(&[(ANNOTATION_PROXY_IMAGE, bad)]).unwrap_err(),
                [format!(
                    "invalid value '{bad}' for annotation 'sidecar.istio.io/proxyImage': {why}{}",
                    if bad.is_empty() {
                        ""
                    } else {
                        " or control characters"
                    }
                )]
            );
        }
    }

    /// The sidecar container and the pod's volumes after applying the injection's patch.
    fn injected(settings: &InjectionSettings) -> (Container, Vec<Volume>) {
        let pod = pod_with_proxy_config("{}");
        let mut doc = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut doc, &inject(&pod, settings).unwrap().patch).unwrap();
        let pod: Pod = serde_json::from_value(doc).unwrap();
        let spec = pod.spec.unwrap();
        let sidecar = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == SIDECAR_CONTAINER_NAME)
            .cloned()
            .unwrap();
        (sidecar, spec.volumes.unwrap_or_default())
    }

    #[test]
    fn with_a_ca_the_sidecar_gets_istios_token_root_and_ca_address() {
        let settings = InjectionSettings {
            ca_address: "istiod.istio-system.svc:15012".into(),
            trust_domain: "example.org".into(),
            ..InjectionSettings::default()
        };
        let (sidecar, volumes) = injected(&settings);
        let env: BTreeMap<String, String> = sidecar
            .env
            .unwrap()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        assert_eq!(env["CA_ADDR"], "istiod.istio-system.svc:15012");
        assert_eq!(env["TRUST_DOMAIN"], "example.org");
        let mounts: BTreeMap<String, (String, Option<bool>)> = sidecar
            .volume_mounts
            .unwrap()
            .into_iter()
            .map(|m| (m.name, (m.mount_path, m.read_only)))
            .collect();
        assert_eq!(
            mounts["istio-token"],
            ("/var/run/secrets/tokens".to_string(), Some(true))
        );
        assert_eq!(
            mounts["istiod-ca-cert"],
            ("/var/run/secrets/istio".to_string(), Some(true))
        );
        let token = volumes.iter().find(|v| v.name == "istio-token").unwrap();
        let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(projection.audience.as_deref(), Some("istio-ca"));
        assert_eq!(projection.expiration_seconds, Some(43200));
        assert_eq!(projection.path, "istio-token");
        let root = volumes.iter().find(|v| v.name == "istiod-ca-cert").unwrap();
        assert_eq!(root.config_map.as_ref().unwrap().name, "istio-ca-root-cert");
    }

    #[test]
    fn without_a_ca_no_identity_is_set_up() {
        let (sidecar, volumes) = injected(&InjectionSettings::default());
        assert!(!sidecar.env.unwrap().iter().any(|e| e.name == "CA_ADDR"));
        assert!(
            !volumes
                .iter()
                .any(|v| v.name == "istio-token" || v.name == "istiod-ca-cert")
        );
    }
}
