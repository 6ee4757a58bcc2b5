{{- define "leaderd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "leaderd.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "leaderd.labels" -}}
{{ include "leaderd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "leaderd.election" -}}
{{- default (include "leaderd.fullname" .) .Values.leaderd.election -}}
{{- end -}}

{{/* RBAC is needed only to patch our own pod's labels or to create Events. */}}
{{- define "leaderd.rbac" -}}
{{- if or (eq .Values.mode "label") .Values.events -}}true{{- end -}}
{{- end -}}

{{- define "leaderd.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "leaderd.image" -}}
"{{ required "leaderd.image.repository is required: build the image (make image IMAGE=REGISTRY/leaderd:TAG), push it, and --set leaderd.image.repository=REGISTRY/leaderd (see helm/leaderd/README.md)" .Values.leaderd.image.repository }}:{{ .Values.leaderd.image.tag }}"
{{- end -}}

{{- define "leaderd.sidecar" -}}
name: leaderd
image: {{ include "leaderd.image" . }}
imagePullPolicy: {{ .Values.leaderd.image.pullPolicy }}
{{- if .Values.leaderd.nativeSidecar }}
restartPolicy: Always
{{- end }}
args:
  - run
  {{- range .Values.leaderd.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: POD_NAME
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  - name: POD_NAMESPACE
    valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  - name: LEADERD_REDIS_URL
    value: {{ include "leaderd.redisURL" . | quote }}
  - name: LEADERD_ELECTION
    value: {{ include "leaderd.election" . | quote }}
  - name: LEADERD_TTL
    value: {{ .Values.leaderd.ttl | quote }}
  {{- with .Values.leaderd.refreshInterval }}
  - name: LEADERD_REFRESH_INTERVAL
    value: {{ . | quote }}
  {{- end }}
  {{- with .Values.leaderd.renewDeadline }}
  - name: LEADERD_RENEW_DEADLINE
    value: {{ . | quote }}
  {{- end }}
  - name: LEADERD_RETRY
    value: {{ .Values.leaderd.retry | quote }}
  - name: LEADERD_RETRY_INTERVAL
    value: {{ .Values.leaderd.retryInterval | quote }}
  - name: LEADERD_HTTP_ADDR
    value: "0.0.0.0:4040"
  - name: LEADERD_LOG_LEVEL
    value: {{ .Values.leaderd.logLevel | quote }}
  {{- if ne (int .Values.leaderd.priority) 0 }}
  - name: LEADERD_PRIORITY
    value: {{ .Values.leaderd.priority | quote }}
  {{- end }}
  {{- if .Values.leaderd.preempt }}
  - name: LEADERD_PREEMPT
    value: "true"
  - name: LEADERD_PREEMPT_DELAY
    value: {{ .Values.leaderd.preemptDelay | quote }}
  {{- end }}
  {{- if gt (int .Values.leaderd.advertisePort) 0 }}
  - name: POD_IP
    valueFrom: {fieldRef: {fieldPath: status.podIP}}
  - name: LEADERD_ADVERTISE
    value: "$(POD_IP):{{ .Values.leaderd.advertisePort }}"
  {{- end }}
  {{- with .Values.leaderd.appHealth }}
  {{- if .url }}
  - name: LEADERD_APP_HEALTH_URL
    value: {{ .url | quote }}
  - name: LEADERD_APP_HEALTH_INTERVAL
    value: {{ .interval | quote }}
  - name: LEADERD_APP_HEALTH_TIMEOUT
    value: {{ .timeout | quote }}
  - name: LEADERD_APP_HEALTH_FAILURES
    value: {{ .failures | quote }}
  - name: LEADERD_APP_HEALTH_SUCCESSES
    value: {{ .successes | quote }}
  {{- end }}
  {{- end }}
  {{- if .Values.redis.existingSecret }}
  - name: LEADERD_REDIS_PASSWORD_FILE
    value: /var/run/secrets/leaderd/redis/{{ .Values.redis.passwordKey }}
  {{- end }}
  {{- if eq .Values.mode "label" }}
  - name: LEADERD_K8S_LABEL
    value: {{ .Values.labelKey | quote }}
  {{- end }}
  {{- if .Values.events }}
  - name: LEADERD_K8S_EVENTS
    value: "true"
  {{- end }}
ports:
  - name: leaderd-http
    containerPort: 4040
    protocol: TCP
{{- if eq .Values.mode "readiness" }}
readinessProbe:
  httpGet: {path: /readyz, port: leaderd-http}
  periodSeconds: 2
  timeoutSeconds: 1
  failureThreshold: 1
{{- else }}
readinessProbe:
  httpGet: {path: /healthz, port: leaderd-http}
  periodSeconds: 5
{{- end }}
livenessProbe:
  httpGet: {path: /healthz, port: leaderd-http}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
securityContext:
  {{- include "leaderd.securityContext" . | nindent 2 }}
resources:
  {{- toYaml .Values.leaderd.resources | nindent 2 }}
{{- if .Values.redis.existingSecret }}
volumeMounts:
  - name: redis-password
    mountPath: /var/run/secrets/leaderd/redis
    readOnly: true
{{- end }}
{{- end -}}

{{- define "leaderd.redisURL" -}}
{{- if .Values.redis.deploy -}}
redis://{{ include "leaderd.fullname" . }}-redis:6379/0
{{- else if .Values.redis.url -}}
{{ .Values.redis.url }}
{{- else -}}
{{ fail "redis.url is required (or redis.deploy: true for a trial Redis)" }}
{{- end -}}
{{- end -}}

{{/* The pod of the Functions load step (Job and CronJob): the admin's credentials
     where given, else the candidates' Redis settings. */}}
{{- define "leaderd.functionsPod" -}}
{{- $secret := default .Values.redis.existingSecret .Values.functions.adminSecret -}}
{{- $key := ternary .Values.functions.adminPasswordKey .Values.redis.passwordKey (ne .Values.functions.adminSecret "") -}}
metadata:
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/component: functions-load
spec:
  restartPolicy: OnFailure
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: functions-load
      image: {{ include "leaderd.image" . }}
      imagePullPolicy: {{ .Values.leaderd.image.pullPolicy }}
      args:
        - functions
        - load
        {{- range .Values.functions.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: LEADERD_REDIS_URL
          value: {{ default (include "leaderd.redisURL" .) .Values.functions.adminUrl | quote }}
        {{- if $secret }}
        - name: LEADERD_REDIS_PASSWORD_FILE
          value: /run/secrets/leaderd-admin/{{ $key }}
        {{- end }}
      securityContext:
        {{- include "leaderd.securityContext" . | nindent 8 }}
      resources:
        requests: {cpu: 10m, memory: 32Mi}
        limits: {memory: 64Mi}
      {{- if $secret }}
      volumeMounts:
        - name: admin-password
          mountPath: /run/secrets/leaderd-admin
          readOnly: true
      {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $secret }}
  volumes:
    - name: admin-password
      secret:
        secretName: {{ $secret }}
        items:
          - key: {{ $key }}
            path: {{ $key }}
  {{- end }}
{{- end -}}
