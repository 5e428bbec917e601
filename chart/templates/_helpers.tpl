{{/*
Values for cleanslate's templates. Inside this chart that is .Values; from a parent chart that has
cleanslate as a dependency it is .Values.cleanslate, so `{{ include "cleanslate.gate" . }}` works there.
*/}}
{{- define "cleanslate.values" -}}
{{- if and (hasKey .Values "cleanslate") (kindIs "map" .Values.cleanslate) -}}
{{- toYaml .Values.cleanslate -}}
{{- else -}}
{{- toYaml .Values -}}
{{- end -}}
{{- end -}}

{{/* Chart name, truncated to 63 characters. */}}
{{- define "cleanslate.name" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- default "cleanslate" $v.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-cleanslate, or the release name when it already contains the chart name. Independent of .Chart so a parent chart computes the same names. */}}
{{- define "cleanslate.fullname" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.fullnameOverride -}}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "cleanslate" $v.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Standard labels. */}}
{{- define "cleanslate.labels" -}}
helm.sh/chart: {{ printf "cleanslate-%s" (.Chart.Version | replace "+" "_") | quote }}
{{ include "cleanslate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cleanslate
{{- end -}}

{{/* Selector labels. */}}
{{- define "cleanslate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cleanslate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The marker ConfigMap's name. */}}
{{- define "cleanslate.markerName" -}}
{{- printf "%s-marker" (include "cleanslate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ServiceAccount of the purge Job and the test Pod. */}}
{{- define "cleanslate.purgeServiceAccountName" -}}
{{- printf "%s-purge" (include "cleanslate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ServiceAccount the gated pods run as (and the gate Role is bound to). */}}
{{- define "cleanslate.serviceAccountName" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- default (printf "%s-gate" (include "cleanslate.fullname" .) | trunc 63 | trimSuffix "-") $v.gate.serviceAccount.name -}}
{{- end -}}

{{/* The cleanslate image reference. */}}
{{- define "cleanslate.image" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- printf "%s:%s" $v.image.repository (default .Chart.AppVersion $v.image.tag | toString) -}}
{{- end -}}

{{/* The revision a run or gate belongs to: cleanup.revision when set (helm template, Argo CD), else .Release.Revision. */}}
{{- define "cleanslate.revision" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- default .Release.Revision $v.cleanup.revision | toString -}}
{{- end -}}

{{/* Render-time guard: production needs allowProduction. The binary refuses again at run time (template-time guards are bypassed by tools that render with `helm template`). */}}
{{- define "cleanslate.validate" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if and $v.cleanup.enabled (has (lower $v.cleanup.environment) (list "prod" "production")) (not $v.cleanup.allowProduction) -}}
{{- fail (printf "cleanslate: cleanup.enabled is true for environment %q; set cleanup.allowProduction=true if purging production is really intended" $v.cleanup.environment) -}}
{{- end -}}
{{- if and $v.cleanup.enabled (not $v.cleanup.targets.queue) (not $v.cleanup.targets.database) -}}
{{- fail "cleanslate: cleanup.enabled is true but cleanup.targets selects neither queue nor database" -}}
{{- end -}}
{{- end -}}

{{/* Hook events of the Job's RBAC and Secret: every event of the Job, plus test for the test Pod. */}}
{{- define "cleanslate.supportHookEvents" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $events := $v.cleanup.hook.events -}}
{{- if $v.cleanup.test.enabled -}}{{- $events = append $events "test" -}}{{- end -}}
{{- join "," (uniq $events) -}}
{{- end -}}

{{/* Delete policy of the Job: before-hook-creation always (any policy replaces Helm's default). */}}
{{- define "cleanslate.jobDeletePolicy" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- join "," (uniq (prepend $v.cleanup.hook.deletePolicy "before-hook-creation")) -}}
{{- end -}}

{{/* Workloads that quiesce stops, comma-separated `deployment/NAME` and `statefulset/NAME`: the enabled, gated apps, then cleanup.quiesce.workloads. Empty when cleanup or quiesce is off. */}}
{{- define "cleanslate.quiesceWorkloads" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $list := list -}}
{{- if and $v.cleanup.enabled $v.cleanup.quiesce.enabled -}}
{{- range $name, $app := $v.apps -}}
{{- if and $app.enabled $app.gated -}}
{{- $list = append $list (printf "deployment/%s" (printf "%s-%s" $.Release.Name $name | trunc 63 | trimSuffix "-")) -}}
{{- end -}}
{{- end -}}
{{- range $v.cleanup.quiesce.workloads -}}
{{- $list = append $list . -}}
{{- end -}}
{{- end -}}
{{- join "," (uniq $list) -}}
{{- end -}}

{{/* RBAC rules for quiesce and resume: get/patch/update on exactly the named workloads and their scale subresource. */}}
{{- define "cleanslate.quiesceRules" -}}
{{- $deployments := list -}}
{{- $statefulsets := list -}}
{{- range splitList "," (include "cleanslate.quiesceWorkloads" .) -}}
{{- if hasPrefix "deployment/" . }}{{ $deployments = append $deployments (trimPrefix "deployment/" .) }}{{ end -}}
{{- if hasPrefix "statefulset/" . }}{{ $statefulsets = append $statefulsets (trimPrefix "statefulset/" .) }}{{ end -}}
{{- end -}}
{{- if $deployments }}
- apiGroups: [apps]
  resources: [deployments, deployments/scale]
  resourceNames: {{ toJson $deployments }}
  verbs: [get, patch, update]
{{- end }}
{{- if $statefulsets }}
- apiGroups: [apps]
  resources: [statefulsets, statefulsets/scale]
  resourceNames: {{ toJson $statefulsets }}
  verbs: [get, patch, update]
{{- end }}
{{- end -}}

{{/* ServiceAccount of the resume Job. */}}
{{- define "cleanslate.resumeServiceAccountName" -}}
{{- printf "%s-resume" (include "cleanslate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Hardened container security context. */}}
{{- define "cleanslate.containerSecurityContext" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- toYaml $v.cleanup.securityContext -}}
{{- end -}}

{{/* Environment of `cleanslate purge`, shared by the hook Job and the test Pod. */}}
{{- define "cleanslate.purgeEnv" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $c := $v.cleanup -}}
{{- $fullname := include "cleanslate.fullname" . -}}
{{- $targets := list -}}
{{- if $c.targets.queue }}{{ $targets = append $targets "rabbitmq" }}{{ end -}}
{{- if $c.targets.database }}{{ $targets = append $targets "etcd" }}{{ end -}}
- name: CLEANSLATE_ENVIRONMENT
  value: {{ $c.environment | quote }}
- name: CLEANSLATE_ALLOW_PRODUCTION
  value: {{ $c.allowProduction | quote }}
- name: CLEANSLATE_TARGETS
  value: {{ join "," $targets | quote }}
- name: CLEANSLATE_TIMEOUT
  value: {{ $c.timeout | quote }}
- name: CLEANSLATE_RETRY_ATTEMPTS
  value: {{ $c.retry.attempts | quote }}
- name: CLEANSLATE_RETRY_BACKOFF
  value: {{ $c.retry.backoff | quote }}
- name: CLEANSLATE_CONCURRENCY
  value: {{ $c.concurrency | quote }}
- name: CLEANSLATE_DRY_RUN
  value: {{ $c.dryRun | quote }}
- name: CLEANSLATE_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
{{- if $c.targets.queue }}
- name: CLEANSLATE_RABBITMQ_URL
  value: {{ $c.rabbitmq.url | quote }}
- name: CLEANSLATE_RABBITMQ_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-credentials" $fullname) $c.rabbitmq.existingSecret }}
      key: {{ $c.rabbitmq.usernameKey }}
- name: CLEANSLATE_RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-credentials" $fullname) $c.rabbitmq.existingSecret }}
      key: {{ $c.rabbitmq.passwordKey }}
- name: CLEANSLATE_RABBITMQ_VHOST
  value: {{ $c.rabbitmq.vhost | quote }}
- name: CLEANSLATE_RABBITMQ_QUEUES
  value: {{ join "," $c.rabbitmq.queues | quote }}
{{- if $c.rabbitmq.queuePattern }}
- name: CLEANSLATE_RABBITMQ_QUEUE_PATTERN
  value: {{ $c.rabbitmq.queuePattern | quote }}
{{- end }}
- name: CLEANSLATE_RABBITMQ_DEAD_LETTERS
  value: {{ $c.rabbitmq.deadLetters | quote }}
- name: CLEANSLATE_RABBITMQ_MISSING
  value: {{ $c.rabbitmq.missing | quote }}
{{- end }}
{{- if $c.targets.database }}
- name: CLEANSLATE_ETCD_ENDPOINTS
  value: {{ join "," $c.etcd.endpoints | quote }}
- name: CLEANSLATE_ETCD_PREFIXES
  value: {{ join "," $c.etcd.prefixes | quote }}
{{- if $c.etcd.protectedPrefixes }}
- name: CLEANSLATE_ETCD_PROTECTED_PREFIXES
  value: {{ join "," $c.etcd.protectedPrefixes | quote }}
{{- end }}
{{- if or $c.etcd.existingSecret $c.etcd.username }}
- name: CLEANSLATE_ETCD_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-credentials" $fullname) $c.etcd.existingSecret }}
      key: {{ $c.etcd.usernameKey }}
- name: CLEANSLATE_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-credentials" $fullname) $c.etcd.existingSecret }}
      key: {{ $c.etcd.passwordKey }}
{{- end }}
{{- end }}
{{- with include "cleanslate.quiesceWorkloads" . }}
- name: CLEANSLATE_QUIESCE
  value: {{ . | quote }}
- name: CLEANSLATE_QUIESCE_TIMEOUT
  value: {{ $c.quiesce.timeout | quote }}
{{- end }}
- name: CLEANSLATE_MARKER
  value: {{ include "cleanslate.markerName" . | quote }}
- name: CLEANSLATE_REVISION
  value: {{ include "cleanslate.revision" . | quote }}
- name: CLEANSLATE_RELEASE
  value: {{ .Release.Name | quote }}
- name: CLEANSLATE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CLEANSLATE_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/*
The gate init container. Put it last among initContainers (after mesh or proxy init containers, so
the API server is reachable). The revision in its env changes the pod template on every deploy,
which is what makes Kubernetes replace the pods so that they pass a gate after each cleanup.
Usage in a parent chart: initContainers: {{ include "cleanslate.gate" . | nindent 8 }}
Renders nothing when cleanup is disabled.
*/}}
{{- define "cleanslate.gate" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.cleanup.enabled -}}
- name: cleanslate-gate
  image: {{ include "cleanslate.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["gate"]
  env:
    - name: CLEANSLATE_MARKER
      value: {{ include "cleanslate.markerName" . | quote }}
    - name: CLEANSLATE_REVISION
      value: {{ include "cleanslate.revision" . | quote }}
    - name: CLEANSLATE_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: CLEANSLATE_GATE_TIMEOUT
      value: {{ $v.gate.timeout | quote }}
    - name: CLEANSLATE_GATE_ON_TIMEOUT
      value: {{ $v.gate.onTimeout | quote }}
    - name: CLEANSLATE_LOG_FORMAT
      value: {{ $v.cleanup.logFormat | quote }}
  resources:
    {{- toYaml $v.gate.resources | nindent 4 }}
  securityContext:
    {{- include "cleanslate.containerSecurityContext" . | nindent 4 }}
{{- end -}}
{{- end -}}
