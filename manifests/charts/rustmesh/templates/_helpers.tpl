{{/* "-<revision>" for a non-default revision, else "". */}}
{{- define "rustmesh.suffix" -}}
{{- if and .Values.revision (ne .Values.revision "default") -}}-{{ .Values.revision }}{{- end -}}
{{- end -}}

{{- define "rustmesh.operator" -}}rustmesh-operator{{ include "rustmesh.suffix" . }}{{- end -}}
{{- define "rustmesh.webhook" -}}rustmesh-webhook{{ include "rustmesh.suffix" . }}{{- end -}}
{{/* The MutatingWebhookConfiguration and the webhook's settings ConfigMap share this name. */}}
{{- define "rustmesh.injector" -}}rustmesh-sidecar-injector{{ include "rustmesh.suffix" . }}{{- end -}}
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
{{- define "rustmesh.containerSecurity" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}
