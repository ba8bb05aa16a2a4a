{{/* The labels every object carries; the selector is the first one only, as in deploy/. */}}
{{- define "certreload.labels" -}}
app.kubernetes.io/name: certreload
{{- end }}

{{/* The agent's ServiceAccount, as RBAC subjects name it. */}}
{{- define "certreload.subject" -}}
- kind: ServiceAccount
  name: certreload
  namespace: {{ .Release.Namespace }}
{{- end }}

{{- define "certreload.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
