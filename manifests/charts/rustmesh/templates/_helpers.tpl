{{/* "-<revision>" for a non-default revision, else "". */}}
{{- define "rustmesh.suffix" -}}
{{- if and .Values.revision (ne .Values.revision "default") -}}-{{ .Values.revision }}{{- end -}}
{{- end -}}

{{- define "rustmesh.operator" -}}rustmesh-operator{{ include "rustmesh.suffix" . }}{{- end -}}
{{- define "rustmesh.webhook" -}}rustmesh-webhook{{ include "rustmesh.suffix" . }}{{- end -}}
{{/* The MutatingWebhookConfiguration and the webhook's settings ConfigMap share this name. */}}
{{- define "rustmesh.injector" -}}rustmesh-sidecar-injector{{ include "rustmesh.suffix" . }}{{- end -}}
{{/* The ValidatingWebhookConfiguration of the Istio kinds (Istio: istio-validator-<rev>-<ns>). */}}
{{- define "rustmesh.validator" -}}rustmesh-validator{{ include "rustmesh.suffix" . }}{{- end -}}
{{/* The Secret of the generated serving certificate every webhook replica shares. */}}
{{- define "rustmesh.webhookTLSSecret" -}}{{ include "rustmesh.webhook" . }}-tls{{- end -}}
{{- define "rustmesh.revision" -}}{{ .Values.revision | default "default" }}{{- end -}}

{{/* An image: <hub>/<name>:<tag>, or the value itself when it has a "/". */}}
{{- define "rustmesh.image" -}}
{{- $img := index . 0 -}}{{- $g := index . 1 -}}
{{- if contains "/" $img -}}{{ $img }}{{- else -}}{{ $g.hub }}/{{ $img }}:{{ $g.tag }}{{- end -}}
{{- end -}}

{{/* Labels of every object but the Namespace. `component` is the part's name. */}}
{{- define "rustmesh.labels" -}}
{{ include "rustmesh.namespaceLabels" . }}
istio.io/rev: {{ include "rustmesh.revision" (index . 0) }}
{{- end -}}

{{/* The same without `istio.io/rev`: on a Namespace that label asks for sidecar injection (and
     for a proxy configuration from the operator), which the control plane's own namespace must
     not get. */}}
{{- define "rustmesh.namespaceLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rustmesh
app.kubernetes.io/managed-by: {{ $.Release.Service }}
helm.sh/chart: {{ $.Chart.Name }}-{{ $.Chart.Version }}
{{- end -}}

{{- define "rustmesh.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $.Release.Name }}
{{- end -}}

{{/* Pod and container security: non-root, read-only root, nothing extra. */}}
{{- define "rustmesh.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{/* The container repeats the pod's RuntimeDefault seccomp profile: a container-level profile
     holds even where the pod's is dropped or overridden (an admission default, a patch), as the
     webhook's injected containers do. `manifests/check` asserts it on every container. */}}
{{- define "rustmesh.containerSecurity" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* PodDisruptionBudget's API: policy/v1 where the cluster serves it (1.21+; policy/v1beta1 is
     gone in 1.25), else policy/v1beta1 (Kubernetes 1.20, the local e2e cluster). Installed,
     Capabilities are the API server's discovery; rendered offline (`helm template`) they are
     Helm's defaults (a current Kubernetes) unless --kube-version says older. */}}
{{- define "rustmesh.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress of both control-plane pods: the API server and DNS. */}}
{{- define "rustmesh.controlPlaneEgress" -}}
{{- $np := .Values.networkPolicy -}}
- ports:
    {{- range $np.apiServerPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with $np.apiServerTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if $np.dnsPorts }}
- ports:
    {{- range $np.dnsPorts }}
    - {protocol: UDP, port: {{ . }}}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers that may scrape metrics: pods of networkPolicy.scraperNamespaces. */}}
{{- define "rustmesh.scrapers" -}}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml .Values.networkPolicy.scraperNamespaces | nindent 10 }}
{{- end -}}
