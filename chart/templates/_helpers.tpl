{{/*
The name under which a parent chart holds cleanslate (its dependency name or alias), or "" inside
cleanslate itself. cleanslate is recognised by its Chart.yaml annotation, which an alias keeps.
*/}}
{{- define "cleanslate.dependencyKey" -}}
{{- if not (index (.Chart.Annotations | default dict) "cleanslate.io/chart") -}}
{{- $found := list -}}
{{- range $name, $sub := (.Subcharts | default dict) -}}
{{- if index ($sub.Chart.Annotations | default dict) "cleanslate.io/chart" -}}{{- $found = append $found $name -}}{{- end -}}
{{- end -}}
{{- if $found -}}{{- first (sortAlpha $found) -}}{{- else if and (hasKey .Values "cleanslate") (kindIs "map" .Values.cleanslate) -}}cleanslate{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Values for cleanslate's templates. Inside this chart that is .Values; from a parent chart that has
cleanslate as a dependency it is .Values.<name or alias>, so `{{ include "cleanslate.gate" . }}`
works there.
*/}}
{{- define "cleanslate.values" -}}
{{- $key := include "cleanslate.dependencyKey" . -}}
{{- if $key -}}
{{- toYaml (index .Values $key) -}}
{{- else -}}
{{- toYaml .Values -}}
{{- end -}}
{{- end -}}

{{/* cleanslate's own appVersion (the image tag), also when a parent chart renders the gate. */}}
{{- define "cleanslate.appVersion" -}}
{{- $key := include "cleanslate.dependencyKey" . -}}
{{- $sub := and $key .Subcharts (index .Subcharts $key) -}}
{{- if $sub -}}
{{- $sub.Chart.AppVersion -}}
{{- else if $key -}}
{{- fail "cleanslate: cannot tell cleanslate's own version from a parent chart on this Helm version; set image.tag" -}}
{{- else -}}
{{- .Chart.AppVersion -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when this chart renders as a dependency of another chart. */}}
{{- define "cleanslate.isDependency" -}}
{{- if contains "/charts/" .Template.BasePath -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when this chart's demo apps are rendered: always on its own, and as a dependency only with renderAppsAsDependency. The gate binding and the quiesce list name only apps that exist. */}}
{{- define "cleanslate.rendersApps" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $dependency := or (include "cleanslate.isDependency" .) (include "cleanslate.dependencyKey" .) -}}
{{- if or (not $dependency) $v.renderAppsAsDependency -}}true{{- end -}}
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

{{/*
BASE-SUFFIX in at most 63 characters, the limit of anything that becomes a label value (a Job's name
becomes its pods' job-name label) or a DNS label. When it would be longer, BASE is cut and a stable
hash of the whole of it keeps the names of different releases, and of the different suffixes, apart:
plain truncation made `<fullname>-marker`, `-purge` and `-resume` all equal for long release names.
Call with (list BASE SUFFIX).
*/}}
{{- define "cleanslate.suffixed" -}}
{{- $base := index . 0 | trimSuffix "-" -}}
{{- $suffix := index . 1 -}}
{{- $full := printf "%s-%s" $base $suffix -}}
{{- if le (len $full) 63 -}}
{{- $full -}}
{{- else -}}
{{- $keep := sub 63 (add (len $suffix) 10) -}}
{{- if lt $keep 1 -}}
{{- fail (printf "cleanslate: the name suffix %q is too long to fit a 63-character name" $suffix) -}}
{{- end -}}
{{- printf "%s-%s-%s" (trunc (int $keep) $base | trimSuffix "-") (sha256sum $base | trunc 8) $suffix -}}
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
{{- include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "marker") -}}
{{- end -}}

{{/* The trigger record (cleanup.trigger): trigger-configmap.yaml. */}}
{{- define "cleanslate.triggerName" -}}
{{- include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "trigger") -}}
{{- end -}}

{{/* ServiceAccount of the purge Job and the test Pod; also the name of the Job. */}}
{{- define "cleanslate.purgeServiceAccountName" -}}
{{- include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "purge") -}}
{{- end -}}

{{/*
ServiceAccount of gated pods that name none: the gate's own when the chart creates it, else the one
named in gate.serviceAccount.name, else the namespace's `default` (what such pods really run as).
*/}}
{{- define "cleanslate.serviceAccountName" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.gate.serviceAccount.create -}}
{{- default (include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "gate")) $v.gate.serviceAccount.name -}}
{{- else -}}
{{- default "default" $v.gate.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Every ServiceAccount a gated pod runs as, comma-separated, for the gate's RoleBinding: the gate's
(for pods of a parent chart and apps without their own), and each gated app's serviceAccountName.
*/}}
{{- define "cleanslate.gateSubjects" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $gate := include "cleanslate.serviceAccountName" . -}}
{{- $names := list $gate -}}
{{- $apps := dict -}}{{- if include "cleanslate.rendersApps" . -}}{{- $apps = $v.apps -}}{{- end -}}
{{- range $name, $app := $apps -}}
{{- if and $app.enabled $app.gated -}}{{- $names = append $names (default $gate $app.serviceAccountName) -}}{{- end -}}
{{- end -}}
{{- join "," (uniq $names) -}}
{{- end -}}

{{/* The cleanslate image reference. */}}
{{- define "cleanslate.image" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $tag := include "cleanslate.toString" $v.image.tag -}}
{{- if not $v.image.tag -}}{{- $tag = include "cleanslate.appVersion" . -}}{{- end -}}
{{- printf "%s:%s" $v.image.repository $tag -}}
{{- end -}}

{{/* The revision a run or gate belongs to: cleanup.revision when set (helm template, Argo CD), else .Release.Revision. */}}
{{/* A value as text; a whole number from a values file arrives as float64, which toString writes as 2.0261122e+07. */}}
{{- define "cleanslate.toString" -}}
{{- if kindIs "float64" . -}}{{- . | int64 | toString -}}{{- else -}}{{- . | toString -}}{{- end -}}
{{- end -}}

{{- define "cleanslate.revision" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $revision := default .Release.Revision $v.cleanup.revision -}}
{{- /* A number from a values file arrives as float64, which toString writes as 2.0261122e+07. */ -}}
{{- if kindIs "float64" $revision -}}{{- $revision | int64 | toString -}}{{- else -}}{{- $revision | toString -}}{{- end -}}
{{- end -}}

{{/*
Seconds, rounded up, of a humantime duration in the schema's units: 30s, 1m30s, 500ms, 2h.
*/}}
{{- define "cleanslate.seconds" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1 "sec" 1 "m" 60 "min" 60 "h" 3600 "hr" 3600 "d" 86400 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?[a-zµ]+" (toString .) -1 -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) -}}
{{- end -}}
{{- ceil $total | int64 -}}
{{- end -}}

{{/*
The seconds one attempt of the purge may take: the run's timeout, the marker write's own 15 s budget,
the quiesce timeout when quiesce is on, and 30 s for scheduling, the image pull and start-up.
*/}}
{{- define "cleanslate.attemptSeconds" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $c := $v.cleanup -}}
{{- $seconds := add (include "cleanslate.seconds" $c.timeout | int64) 15 30 -}}
{{- if $c.quiesce.enabled -}}{{- $seconds = add $seconds (include "cleanslate.quiesceSeconds" . | int64) -}}{{- end -}}
{{- $seconds -}}
{{- end -}}

{{/*
How long the quiesce may wait for the workloads' pods to be gone: cleanup.quiesce.timeout, or longer
when a workload to stop gives its pods a longer grace period (`terminationGracePeriodSeconds`,
read with `lookup` from the live workloads; one per replica for an OrderedReady StatefulSet): that
plus 15 s. `lookup` needs the deployer's `list` on Deployments and StatefulSets; Helm fails the render
on a refusal. A consumer that drains for 60 s is
not cut short into a restore, and the Job's derived deadline holds it. Under `helm template` the
binary still raises its wait to the grace period it reads, within what the deadline leaves.
*/}}
{{- define "cleanslate.quiesceSeconds" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $seconds := include "cleanslate.seconds" $v.cleanup.quiesce.timeout | int64 -}}
{{- $stopped := splitList "," (include "cleanslate.quiesceWorkloads" .) -}}
{{- range $kind, $object := dict "deployment" "Deployment" "statefulset" "StatefulSet" -}}
{{- range (lookup "apps/v1" $object $.Release.Namespace "").items -}}
{{- if has (printf "%s/%s" $kind .metadata.name) $stopped -}}
{{- $grace := 30 -}}
{{- if not (kindIs "invalid" .spec.template.spec.terminationGracePeriodSeconds) -}}{{- $grace = .spec.template.spec.terminationGracePeriodSeconds | int64 -}}{{- end -}}
{{- /* An OrderedReady StatefulSet stops its pods one at a time: one grace period per replica. */ -}}
{{- if and (eq $kind "statefulset") (eq (.spec.podManagementPolicy | default "OrderedReady") "OrderedReady") -}}
{{- $grace = mul $grace (max 1 (.spec.replicas | default 1 | int64)) -}}
{{- end -}}
{{- if gt (add $grace 15) $seconds -}}{{- $seconds = add $grace 15 -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $seconds -}}
{{- end -}}

{{/*
activeDeadlineSeconds of the Job. It counts from the Job's start across every pod, so it must hold
backoffLimit + 1 attempts plus the Job controller's back-off between them (10 s, doubling, capped at
6 min: https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-backoff-failure-policy),
or the last retry is always killed. Derived when unset; a set value that is too short fails the render.
*/}}
{{- define "cleanslate.activeDeadlineSeconds" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $hook := $v.cleanup.hook -}}
{{- $attempts := add (int $hook.backoffLimit) 1 -}}
{{- $attempt := include "cleanslate.attemptSeconds" . | int64 -}}
{{- $backoff := 0 -}}
{{- $delay := 10 -}}
{{- range until (int $hook.backoffLimit) -}}
{{- $backoff = add $backoff (min $delay 360) -}}
{{- $delay = mul $delay 2 -}}
{{- end -}}
{{- $needed := add (mul $attempts $attempt) $backoff -}}
{{- if $hook.activeDeadlineSeconds -}}
{{- if lt (int64 $hook.activeDeadlineSeconds) (int64 $needed) -}}
{{- fail (printf "cleanslate: cleanup.hook.activeDeadlineSeconds %d is too short for %d attempts (backoffLimit %d + 1) of %d s each (timeout %s + 15 s marker budget + quiesce timeout if any + 30 s pod start) plus %d s of Job back-off between them: it needs at least %d. Raise it, lower cleanup.timeout or backoffLimit, or leave it unset to derive it" (int64 $hook.activeDeadlineSeconds) $attempts (int $hook.backoffLimit) $attempt $v.cleanup.timeout $backoff $needed) -}}
{{- end -}}
{{- int64 $hook.activeDeadlineSeconds -}}
{{- else -}}
{{- $needed -}}
{{- end -}}
{{- end -}}

{{/*
activeDeadlineSeconds of the resume Job: its own attempts (the run's timeout plus 30 s to start each),
not the purge's (no quiesce wait, no purge), so a deploy's two hooks together stay inside Helm's and
Flux's default 5-minute timeout with values-dev.yaml.
*/}}
{{- define "cleanslate.resumeDeadlineSeconds" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $hook := $v.cleanup.hook -}}
{{- $attempt := add (include "cleanslate.seconds" $v.cleanup.timeout | int64) 30 -}}
{{- $backoff := 0 -}}
{{- $delay := 10 -}}
{{- range until (int $hook.backoffLimit) -}}
{{- $backoff = add $backoff (min $delay 360) -}}
{{- $delay = mul $delay 2 -}}
{{- end -}}
{{- add (mul (add (int $hook.backoffLimit) 1) $attempt) $backoff -}}
{{- end -}}

{{/* Render-time guard: production needs allowProduction. The binary refuses again at run time (template-time guards are bypassed by tools that render with `helm template`). */}}
{{- define "cleanslate.validate" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- /* A token match, the binary's rule too: split on anything not a letter or digit; any token equal
that is prod, prd or production, optionally numbered (any case), is production: prd, eu-prod,
production-eu, PROD, prod2, prd01. */ -}}
{{- $production := false -}}
{{- range regexSplit "[^a-z0-9]+" (lower $v.cleanup.environment) -1 -}}
{{- if regexMatch "^(prod|prd|production)[0-9]*$" . -}}{{- $production = true -}}{{- end -}}
{{- end -}}
{{- if and $v.cleanup.enabled $production $v.cleanup.schedule -}}
{{- fail (printf "cleanslate: cleanup.schedule is set for environment %q: scheduled resets are never rendered for production, allowProduction or not" $v.cleanup.environment) -}}
{{- end -}}
{{- if and $v.cleanup.enabled (not $v.cleanup.targets.database) (or $v.cleanup.etcd.seed $v.cleanup.etcd.seedConfigMap) -}}
{{- fail "cleanslate: cleanup.etcd.seed (or seedConfigMap) is set but cleanup.targets.database is off: the seed would never be written" -}}
{{- end -}}
{{- if and $v.cleanup.enabled $production (not $v.cleanup.allowProduction) -}}
{{- fail (printf "cleanslate: cleanup.enabled is true for environment %q; set cleanup.allowProduction=true if purging production is really intended" $v.cleanup.environment) -}}
{{- end -}}
{{- if and $v.cleanup.enabled (not $v.cleanup.targets.queue) (not $v.cleanup.targets.database) -}}
{{- fail "cleanslate: cleanup.enabled is true but cleanup.targets selects neither queue nor database" -}}
{{- end -}}
{{- /* No default targets: a shared broker or etcd may hold another team's `monorepo`. */ -}}
{{- if and $v.cleanup.enabled $v.cleanup.targets.queue -}}
{{- if not $v.cleanup.rabbitmq.url -}}
{{- fail "cleanslate: cleanup.rabbitmq.url is empty: set the management API URL (http://rabbitmq:15672), or turn cleanup.targets.queue off" -}}
{{- end -}}
{{- if and (not $v.cleanup.rabbitmq.queues) (not $v.cleanup.rabbitmq.queuePattern) -}}
{{- fail "cleanslate: nothing names the queues to purge: set cleanup.rabbitmq.queues (or queuePattern), or turn cleanup.targets.queue off; there are no default targets" -}}
{{- end -}}
{{- end -}}
{{- if and $v.cleanup.enabled $v.cleanup.targets.database -}}
{{- if not $v.cleanup.etcd.endpoints -}}
{{- fail "cleanslate: cleanup.etcd.endpoints is empty: set the etcd endpoints (http://etcd:2379), or turn cleanup.targets.database off" -}}
{{- end -}}
{{- if not $v.cleanup.etcd.prefixes -}}
{{- fail "cleanslate: nothing names the etcd prefixes to delete: set cleanup.etcd.prefixes, or turn cleanup.targets.database off; there are no default targets" -}}
{{- end -}}
{{- $tls := $v.cleanup.etcd.tls -}}
{{- range $v.cleanup.etcd.endpoints -}}
{{- if and (hasPrefix "https://" .) (not $tls.existingSecret) -}}
{{- fail (printf "cleanslate: etcd endpoint %s is https: set cleanup.etcd.tls.existingSecret to a Secret with the CA (%s) that signed its certificate" . $tls.caKey) -}}
{{- end -}}
{{- end -}}
{{- if and $v.cleanup.etcd.seed $v.cleanup.etcd.seedConfigMap -}}
{{- fail "cleanslate: set cleanup.etcd.seed or cleanup.etcd.seedConfigMap, not both" -}}
{{- end -}}
{{- if and $tls.existingSecret (ne (empty $tls.certKey) (empty $tls.keyKey)) -}}
{{- fail "cleanslate: cleanup.etcd.tls.certKey and keyKey go together: set both for a client certificate, or empty both for none" -}}
{{- end -}}
{{- end -}}
{{- /* Every gate waits for a Job of its revision: the Job must run on every install and every upgrade. */ -}}
{{- $events := $v.cleanup.hook.events -}}
{{- if and $v.cleanup.enabled (not (or (has "pre-install" $events) (has "post-install" $events))) -}}
{{- fail (printf "cleanslate: cleanup.hook.events %v has no install event (pre-install or post-install): the gated pods of an install would wait for a Job that never runs" $events) -}}
{{- end -}}
{{- if and $v.cleanup.enabled (not (or (has "pre-upgrade" $events) (has "post-upgrade" $events))) -}}
{{- fail (printf "cleanslate: cleanup.hook.events %v has no upgrade event (pre-upgrade or post-upgrade): the gated pods of every upgrade would wait for a Job that never runs" $events) -}}
{{- end -}}
{{- end -}}

{{/*
Pod-level knobs of every cleanslate pod (the purge Job's, the test Pod, the resume Job's), like every
chart platform teams run: labels and annotations (cost allocation, opting out of a mesh's injection),
and where it may run (tainted or dedicated node pools). The pod's own labels win over podLabels.
*/}}
{{- define "cleanslate.podLabels" -}}
{{- with omit .Values.cleanup.podLabels "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" "helm.sh/chart" }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{- define "cleanslate.podAnnotations" -}}
{{- with omit .Values.cleanup.podAnnotations "helm.sh/hook" "helm.sh/hook-weight" "helm.sh/hook-delete-policy" "helm.sh/hook-output-log-policy" "argocd.argoproj.io/hook" "argocd.argoproj.io/sync-wave" "argocd.argoproj.io/hook-delete-policy" }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{- define "cleanslate.podScheduling" -}}
{{- $c := .Values.cleanup -}}
{{- with $c.nodeSelector -}}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
A Job's pod failure policy: a refusal (77), a configuration error (78), rejected credentials or a
missing permission (79), or a quiesce that timed out (80: a retry would stop the workloads again, a
second outage) in CONTAINER fails the Job at once instead of being retried backoffLimit times. Needs the pod's
restartPolicy Never. Beta and on by default since Kubernetes 1.26, GA in 1.31
(https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy).
*/}}
{{- define "cleanslate.podFailurePolicy" -}}
podFailurePolicy:
  rules:
    # A pod evicted or preempted (node drain, a higher priority class) is retried without using up
    # backoffLimit: the disruption says nothing about the run.
    - action: Ignore
      onPodConditions:
        # `status` defaults to True on the server; Kubernetes 1.26's schema requires it.
        - type: DisruptionTarget
          status: "True"
    - action: FailJob
      # Kubernetes 1.26's OpenAPI marks onPodConditions required on every rule (client-side
      # validation, Helm 3's included, refuses a rule without it); empty, the server accepts it
      # beside onExitCodes (its validation refuses only both non-empty).
      onPodConditions: []
      onExitCodes:
        containerName: {{ . }}
        operator: In
        values: [77, 78, 79, 80]
{{- end -}}

{{/*
Hook events of the Job's RBAC and Secret: every event of the Job, and post-delete. Helm 3 deletes a
failed event's hooks by hook-failed only (the failed Job), so the identity of a failed deploy stays
until the next one; post-delete re-creates and at once deletes it (before-hook-creation, then
hook-succeeded) when the release is uninstalled, so nothing that carries rights outlives it.
*/}}
{{- define "cleanslate.supportHookEvents" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- join "," (uniq (append $v.cleanup.hook.events "post-delete")) -}}
{{- end -}}

{{/*
Delete policy of the hook identities (ServiceAccount, Role, RoleBinding, dev Secret): they exist only
while the hooks of their event run. Helm deletes hook-succeeded resources once every hook of the event
succeeded, as cert-manager's startupapicheck RBAC does (REFERENCES 7.4). After a failed event Helm 4
deletes the hooks that had succeeded; Helm 3 leaves them until the next run of the event (whose
before-hook-creation replaces them) or the uninstall (the post-delete event).
*/}}
{{- define "cleanslate.identityDeletePolicy" -}}before-hook-creation,hook-succeeded{{- end -}}

{{/* ServiceAccount, Role and RoleBinding of `helm test`'s Pod, and its dev Secret. */}}
{{- define "cleanslate.testServiceAccountName" -}}
{{- include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "test") -}}
{{- end -}}

{{/*
Rules of a purge identity (the hook Job's, the test Pod's): read and update only the marker, and
create it when it is missing (deleted by hand or by a janitor: a run that cannot record its outcome
leaves restarting gated pods waiting; RBAC cannot limit `create` to a name); Events; with quiesce,
list the workloads (to find the live ones gated on the marker), get/patch on exactly the workloads it
stops and get/update on their scale subresource, and list/watch on pods to wait for them (a label
selector cannot be limited by resourceNames); delete on pods only with StatefulSets.
*/}}
{{- define "cleanslate.purgeRules" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [{{ include "cleanslate.markerName" . | quote }}, {{ include "cleanslate.triggerName" . | quote }}]
  # What src/kube.rs sends for the marker (GET and PUT, also as a dry run first) and the trigger
  # record (GET, PUT).
  verbs: [get, update]
- apiGroups: [""]
  resources: [configmaps]
  # Only when the marker is missing (src/purge/record.rs); RBAC cannot name what it creates.
  verbs: [create]
{{- include "cleanslate.eventsRule" . }}
{{- if $v.cleanup.quiesce.enabled }}
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  # To find the live workloads gated on this release's marker; stopping them needs the named rules.
  verbs: [list]
{{- end }}
{{- with include "cleanslate.quiesceRules" . }}
{{- . | trim | nindent 0 }}
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- if contains "statefulset/" (include "cleanslate.quiesceWorkloads" $) }}
# Only with StatefulSets: an OrderedReady set with unhealthy pods never finishes a scale to 0, so
# once it is at 0 src/quiesce.rs deletes those pods (gracefully). RBAC cannot name pods that do
# not exist yet, so this covers the namespace's pods.
- apiGroups: [""]
  resources: [pods]
  verbs: [delete]
{{- end }}
{{- end }}
{{- end -}}

{{/*
Hook annotations of one hook resource, for Helm and for Argo CD. Every hook template calls this.
Argo CD does not run Helm's hooks: it maps them, and maps post-install,pre-upgrade to both PreSync and
PostSync (it cannot tell an install from an upgrade), so the Job would purge twice per sync, the second
time under the new pods. Its own annotations take precedence over Helm's, so each hook resource gets
exactly one Argo CD phase (cleanup.hook.argocdPhase, or PreSync when the Job has a pre-* event, else
PostSync), a sync wave equal to its Helm weight, and the same delete policies. Resources only on the
`test` event get none: Argo CD does not run Helm tests.
Argument: dict "ctx" . "events" (list ...) "weight" N "deletePolicy" "a,b" ["outputLogPolicy" "a,b"]
*/}}
{{- define "cleanslate.hookAnnotations" -}}
{{- $v := include "cleanslate.values" .ctx | fromYaml -}}
{{- $weight := int .weight -}}
helm.sh/hook: {{ join "," .events | quote }}
helm.sh/hook-weight: {{ $weight | quote }}
helm.sh/hook-delete-policy: {{ .deletePolicy | quote }}
{{- with .outputLogPolicy }}
helm.sh/hook-output-log-policy: {{ . | quote }}
{{- end }}
{{- if without .events "test" }}
{{- /*
Argo CD phase: PreSync when the Job runs on a pre-* event; otherwise Sync, not PostSync: PostSync waits
for the gated Deployments to be healthy, which they never are before the purge (a deadlock).
*/ -}}
{{- $phase := .phase | default $v.cleanup.hook.argocdPhase -}}
{{- if not $phase -}}
{{- $phase = "Sync" -}}
{{- range $v.cleanup.hook.events -}}{{- if hasPrefix "pre-" . -}}{{- $phase = "PreSync" -}}{{- end -}}{{- end -}}
{{- end -}}
{{- $policies := list -}}
{{- range splitList "," .deletePolicy -}}
{{- $policies = append $policies (get (dict "before-hook-creation" "BeforeHookCreation" "hook-succeeded" "HookSucceeded" "hook-failed" "HookFailed") (trim .)) -}}
{{- end }}
argocd.argoproj.io/hook: {{ $phase }}
argocd.argoproj.io/sync-wave: {{ $weight | quote }}
argocd.argoproj.io/hook-delete-policy: {{ join "," (compact $policies) }}
{{- else }}
{{- /* Once any resource has Argo CD hook annotations, Argo CD ignores helm.sh/hook on all of them:
without Skip, the helm test Pod would be applied, and purge, on every sync. */}}
argocd.argoproj.io/hook: Skip
{{- end -}}
{{- end -}}

{{/* Delete policy of the Job: before-hook-creation always (any policy replaces Helm's default). */}}
{{- define "cleanslate.jobDeletePolicy" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- join "," (uniq (prepend $v.cleanup.hook.deletePolicy "before-hook-creation")) -}}
{{- end -}}

{{/*
Workloads that quiesce stops, comma-separated `deployment/NAME` and `statefulset/NAME`: the enabled,
gated apps, cleanup.quiesce.workloads, then the live workloads whose pods' gate reads this release's
marker (cleanslate.liveGatedWorkloads). Empty when cleanup or quiesce is off.
*/}}
{{- define "cleanslate.quiesceWorkloads" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $list := list -}}
{{- if and $v.cleanup.enabled $v.cleanup.quiesce.enabled -}}
{{- $apps := dict -}}{{- if include "cleanslate.rendersApps" . -}}{{- $apps = $v.apps -}}{{- end -}}
{{- range $name, $app := $apps -}}
{{- if and $app.enabled $app.gated -}}
{{- $list = append $list (printf "deployment/%s" (include "cleanslate.suffixed" (list $.Release.Name $name))) -}}
{{- end -}}
{{- end -}}
{{- range $v.cleanup.quiesce.workloads -}}
{{- $list = append $list . -}}
{{- end -}}
{{- with include "cleanslate.liveGatedWorkloads" . -}}
{{- $list = concat $list (splitList "," .) -}}
{{- end -}}
{{- end -}}
{{- join "," (uniq $list) -}}
{{- end -}}

{{/*
The Deployments and StatefulSets running now whose pod template has a cleanslate gate reading this
release's marker, found with Helm's `lookup` at install and upgrade time: the writers of the revision
being replaced, including an app this upgrade removes or renames (it keeps running, and writing,
until Helm deletes it after the apply) and a parent chart's own gated Deployment. Under
`helm template`-based tools (Argo CD) `lookup` finds nothing: the Job then finds such workloads
itself and reports those its Role does not name, and cleanup.quiesce.workloads has to list them.
*/}}
{{- define "cleanslate.liveGatedWorkloads" -}}
{{- $marker := include "cleanslate.markerName" . -}}
{{- $found := list -}}
{{- range $kind, $object := dict "deployment" "Deployment" "statefulset" "StatefulSet" -}}
{{- range (lookup "apps/v1" $object $.Release.Namespace "").items -}}
{{- $workload := printf "%s/%s" $kind .metadata.name -}}
{{- range (.spec.template.spec.initContainers | default list) -}}
{{- if eq .name "cleanslate-gate" -}}
{{- range (.env | default list) -}}
{{- if and (eq .name "CLEANSLATE_MARKER") (eq (toString .value) $marker) -}}
{{- $found = append $found $workload -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "," (uniq $found) -}}
{{- end -}}

{{/*
Events of the resume Job and its RBAC: after every upgrade and every rollback whenever cleanup is on
(a rollback runs the target revision's hooks, and that revision may have had quiesce off while a newer
one stopped workloads), and after an install with quiesce on (a workload outside the chart, a pod whose
native sidecar ran before its gate, or a gate that proceeds on its timeout may have been stopped).
*/}}
{{- define "cleanslate.resumeHookEvents" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $events := list "post-upgrade" "post-rollback" -}}
{{- if $v.cleanup.quiesce.enabled -}}{{- $events = prepend $events "post-install" -}}{{- end -}}
{{- join "," $events -}}
{{- end -}}

{{/* RBAC rules for quiesce and resume: get/patch/update on exactly the named workloads and their scale subresource. */}}
{{- define "cleanslate.quiesceRules" -}}
{{- $deployments := list -}}
{{- $statefulsets := list -}}
{{- range splitList "," (include "cleanslate.quiesceWorkloads" .) -}}
{{- if hasPrefix "deployment/" . }}{{ $deployments = append $deployments (trimPrefix "deployment/" .) }}{{ end -}}
{{- if hasPrefix "statefulset/" . }}{{ $statefulsets = append $statefulsets (trimPrefix "statefulset/" .) }}{{ end -}}
{{- end -}}
{{- /* Exactly what src/quiesce.rs calls: read the workload and patch its annotations (the record),
read and replace (update) its scale. RBAC cannot limit what a patch changes: `patch` on a workload is
a full write (its pod template, image and ServiceAccount included), which is why it names each
workload here and why the identities that hold it exist only while their hooks run (README, "No
standing rights"). */ -}}
{{- if $deployments }}
- apiGroups: [apps]
  resources: [deployments]
  resourceNames: {{ toJson $deployments }}
  verbs: [get, patch]
- apiGroups: [apps]
  resources: [deployments/scale]
  resourceNames: {{ toJson $deployments }}
  verbs: [get, update]
{{- end }}
{{- if $statefulsets }}
- apiGroups: [apps]
  resources: [statefulsets]
  resourceNames: {{ toJson $statefulsets }}
  verbs: [get, patch]
- apiGroups: [apps]
  resources: [statefulsets/scale]
  resourceNames: {{ toJson $statefulsets }}
  verbs: [get, update]
{{- end }}
{{- end -}}

{{/* ServiceAccount of the resume Job. */}}
{{- define "cleanslate.resumeServiceAccountName" -}}
{{- include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "resume") -}}
{{- end -}}

{{/* Hardened container security context. */}}
{{- define "cleanslate.containerSecurityContext" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- toYaml $v.cleanup.securityContext -}}
{{- end -}}

{{/*
A list value rendered through `tpl` item by item and joined with commas, so one values file serves
every namespace: prefixes: ["{{ .Release.Namespace }}/"]. Argument: dict "list" L "ctx" .
*/}}
{{- define "cleanslate.tplList" -}}
{{- $ctx := .ctx -}}
{{- $key := .key | default "a list" -}}
{{- $out := list -}}
{{- range $i, $item := .list -}}
{{- $rendered := tpl (toString $item) $ctx -}}
{{- if not (trim $rendered) -}}
{{- fail (printf "%s: entry %d renders empty (%q): an empty entry would be dropped, or an empty protected prefix protect nothing; give it a value or remove it" $key (add1 $i) (toString $item)) -}}
{{- end -}}
{{- $out = append $out $rendered -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/*
Environment of `cleanslate purge`, shared by the hook Job and the test Pod.
Argument: dict "ctx" . "credentials" NAME (the Secret the chart renders for dev credentials: the hook's
for the Job, the test identity's for the test Pod; an existingSecret wins over both).
*/}}
{{- define "cleanslate.purgeEnv" -}}
{{- $ctx := .ctx -}}
{{- $rendered := .credentials -}}
{{- with $ctx -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $c := $v.cleanup -}}
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
      name: {{ default $rendered $c.rabbitmq.existingSecret }}
      key: {{ $c.rabbitmq.usernameKey }}
- name: CLEANSLATE_RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $rendered $c.rabbitmq.existingSecret }}
      key: {{ $c.rabbitmq.passwordKey }}
- name: CLEANSLATE_RABBITMQ_VHOST
  {{- $vhost := tpl $c.rabbitmq.vhost . }}
  {{- if not (trim $vhost) }}
  {{- fail (printf "cleanup.rabbitmq.vhost renders empty (%q): the purge would go to the default vhost `/`; name the vhost" $c.rabbitmq.vhost) }}
  {{- end }}
  value: {{ $vhost | quote }}
- name: CLEANSLATE_RABBITMQ_QUEUES
  value: {{ include "cleanslate.tplList" (dict "list" $c.rabbitmq.queues "ctx" . "key" "cleanup.rabbitmq.queues") | quote }}
{{- if $c.rabbitmq.queuePattern }}
- name: CLEANSLATE_RABBITMQ_QUEUE_PATTERN
  value: {{ tpl $c.rabbitmq.queuePattern . | quote }}
{{- end }}
- name: CLEANSLATE_RABBITMQ_DEAD_LETTERS
  value: {{ $c.rabbitmq.deadLetters | quote }}
- name: CLEANSLATE_RABBITMQ_MISSING
  value: {{ $c.rabbitmq.missing | quote }}
{{- if $c.rabbitmq.tls.existingSecret }}
- name: CLEANSLATE_RABBITMQ_CA_FILE
  value: {{ printf "/etc/cleanslate/rabbitmq-tls/%s" $c.rabbitmq.tls.caKey | quote }}
{{- end }}
{{- end }}
{{- if $c.targets.database }}
- name: CLEANSLATE_ETCD_ENDPOINTS
  value: {{ join "," $c.etcd.endpoints | quote }}
- name: CLEANSLATE_ETCD_PREFIXES
  value: {{ include "cleanslate.tplList" (dict "list" $c.etcd.prefixes "ctx" . "key" "cleanup.etcd.prefixes") | quote }}
{{- if $c.etcd.protectedPrefixes }}
- name: CLEANSLATE_ETCD_PROTECTED_PREFIXES
  value: {{ include "cleanslate.tplList" (dict "list" $c.etcd.protectedPrefixes "ctx" . "key" "cleanup.etcd.protectedPrefixes") | quote }}
{{- end }}
{{- if or $c.etcd.existingSecret $c.etcd.username }}
- name: CLEANSLATE_ETCD_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ default $rendered $c.etcd.existingSecret }}
      key: {{ $c.etcd.usernameKey }}
- name: CLEANSLATE_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $rendered $c.etcd.existingSecret }}
      key: {{ $c.etcd.passwordKey }}
{{- end }}
{{- if or $c.etcd.seed $c.etcd.seedConfigMap }}
- name: CLEANSLATE_ETCD_SEED_FILE
  value: {{ printf "/etc/cleanslate/seed/%s" $c.etcd.seedKey | quote }}
{{- end }}
{{- with $c.etcd.tls }}
{{- if .existingSecret }}
- name: CLEANSLATE_ETCD_CA_FILE
  value: {{ printf "/etc/cleanslate/etcd-tls/%s" .caKey | quote }}
{{- if .certKey }}
- name: CLEANSLATE_ETCD_CERT_FILE
  value: {{ printf "/etc/cleanslate/etcd-tls/%s" .certKey | quote }}
- name: CLEANSLATE_ETCD_KEY_FILE
  value: {{ printf "/etc/cleanslate/etcd-tls/%s" .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $c.quiesce.enabled }}
{{- with include "cleanslate.quiesceWorkloads" . }}
- name: CLEANSLATE_QUIESCE
  value: {{ . | quote }}
{{- end }}
- name: CLEANSLATE_QUIESCE_GATED
  value: "true"
- name: CLEANSLATE_QUIESCE_TIMEOUT
  value: {{ printf "%ds" (include "cleanslate.quiesceSeconds" . | int64) | quote }}
{{- end }}
- name: CLEANSLATE_MARKER
  value: {{ include "cleanslate.markerName" . | quote }}
# Cleared by any failed run, written by a cleaning one with cleanup.trigger.
- name: CLEANSLATE_TRIGGER_RECORD
  value: {{ include "cleanslate.triggerName" . | quote }}
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
{{- end -}}

{{/*
TLS material of the purge (Job and test Pod): each configured Secret mounted read-only, only the keys
named (a missing key stops the pod from starting, with the key's name in its Events). The paths are
the ones purgeEnv passes.
*/}}
{{- define "cleanslate.tlsVolumes" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $c := $v.cleanup -}}
{{- if and $c.targets.queue $c.rabbitmq.tls.existingSecret }}
- name: rabbitmq-tls
  secret:
    secretName: {{ $c.rabbitmq.tls.existingSecret }}
    items:
      - {key: {{ $c.rabbitmq.tls.caKey }}, path: {{ $c.rabbitmq.tls.caKey }}}
{{- end }}
{{- if and $c.targets.database (or $c.etcd.seed $c.etcd.seedConfigMap) }}
- name: etcd-seed
  configMap:
    name: {{ $c.etcd.seedConfigMap | default (include "cleanslate.suffixed" (list (include "cleanslate.fullname" .) "seed")) }}
    items:
      - {key: {{ $c.etcd.seedKey }}, path: {{ $c.etcd.seedKey }}}
{{- end }}
{{- if and $c.targets.database $c.etcd.tls.existingSecret }}
- name: etcd-tls
  secret:
    secretName: {{ $c.etcd.tls.existingSecret }}
    items:
      - {key: {{ $c.etcd.tls.caKey }}, path: {{ $c.etcd.tls.caKey }}}
      {{- if $c.etcd.tls.certKey }}
      - {key: {{ $c.etcd.tls.certKey }}, path: {{ $c.etcd.tls.certKey }}}
      - {key: {{ $c.etcd.tls.keyKey }}, path: {{ $c.etcd.tls.keyKey }}}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "cleanslate.tlsVolumeMounts" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- $c := $v.cleanup -}}
{{- if and $c.targets.database (or $c.etcd.seed $c.etcd.seedConfigMap) }}
- {name: etcd-seed, mountPath: /etc/cleanslate/seed, readOnly: true}
{{- end }}
{{- if and $c.targets.queue $c.rabbitmq.tls.existingSecret }}
- {name: rabbitmq-tls, mountPath: /etc/cleanslate/rabbitmq-tls, readOnly: true}
{{- end }}
{{- if and $c.targets.database $c.etcd.tls.existingSecret }}
- {name: etcd-tls, mountPath: /etc/cleanslate/etcd-tls, readOnly: true}
{{- end }}
{{- end -}}

{{/*
The gate init container. Put it last among initContainers (after mesh or proxy init containers, so
the API server is reachable). The revision in its env changes the pod template on every deploy,
which is what makes Kubernetes replace the pods so that they pass a gate after each cleanup.
Usage in a parent chart: initContainers: {{ include "cleanslate.gate" . | nindent 8 }}
Renders nothing when cleanup is disabled.
*/}}
{{- define "cleanslate.gate" -}}
{{- include "cleanslate.gateContainer" (dict "ctx" . "token" false) -}}
{{- end -}}

{{/* The gate container; argument: dict "ctx" . "token" (mount cleanslate.gateVolumes' token). */}}
{{- define "cleanslate.gateContainer" -}}
{{- $token := .token -}}
{{- with .ctx -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.cleanup.enabled -}}
- name: cleanslate-gate
  image: {{ include "cleanslate.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["gate"]
  {{- include "cleanslate.terminationMessage" . | nindent 2 }}
  env:
    {{- include "cleanslate.terminationEnv" . | nindent 4 }}
    {{- include "cleanslate.eventsEnv" . | nindent 4 }}
    # This pod, for its Events (HOSTNAME differs with hostNetwork, spec.hostname or long names).
    - name: CLEANSLATE_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
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
    {{- if $token }}
    - name: CLEANSLATE_KUBE_TOKEN_FILE
      value: /var/run/secrets/cleanslate.io/serviceaccount/token
    - name: CLEANSLATE_KUBE_CA_FILE
      value: /var/run/secrets/cleanslate.io/serviceaccount/ca.crt
    {{- end }}
  resources:
    {{- toYaml $v.gate.resources | nindent 4 }}
  securityContext:
    {{- include "cleanslate.containerSecurityContext" . | nindent 4 }}
  {{- if $token }}
  volumeMounts:
    - {name: cleanslate-kube-api-access, mountPath: /var/run/secrets/cleanslate.io/serviceaccount, readOnly: true}
  {{- end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The gate with its own service-account token: a projected volume (cleanslate.gateVolumes) like the one
the kubelet mounts when token automounting is on (a bound, expiring token, the cluster CA from the
kube-root-ca.crt ConfigMap, the namespace:
https://kubernetes.io/docs/concepts/security/service-accounts/#get-a-token), so the gate can read the
marker in pods and ServiceAccounts that set automountServiceAccountToken: false. The pod's volumes
must include cleanslate.gateVolumes. The chart's own apps use it; a parent chart may.
*/}}
{{- define "cleanslate.gateWithToken" -}}
{{- include "cleanslate.gateContainer" (dict "ctx" . "token" true) -}}
{{- end -}}

{{/* The pod volume cleanslate.gateWithToken mounts (nothing when cleanup is off). */}}
{{- define "cleanslate.gateVolumes" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.cleanup.enabled -}}
- name: cleanslate-kube-api-access
  projected:
    defaultMode: 292 # 0444: readable, not writable
    sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap:
          name: kube-root-ca.crt
          items: [{key: ca.crt, path: ca.crt}]
      - downwardAPI:
          items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]
{{- end -}}
{{- end -}}

{{/*
Termination message: the container's one-line summary (or failure) is what `kubectl describe pod`,
Argo CD and Helm's hook-failure output show; FallbackToLogsOnError shows the log's tail when the
binary could not write it. The binary writes to the path it is given (src/termination.rs).
*/}}
{{- define "cleanslate.terminationMessage" -}}
terminationMessagePath: /dev/termination-log
terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{- define "cleanslate.terminationEnv" -}}
- name: CLEANSLATE_TERMINATION_MESSAGE_PATH
  value: /dev/termination-log
{{- end -}}

{{/* Events: the switch and this pod's uid (what `kubectl describe pod` matches Events on, and part of the run's name on what it stops). */}}
{{- define "cleanslate.eventsEnv" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
- name: CLEANSLATE_EVENTS
  value: {{ $v.cleanup.events.enabled | quote }}
{{- /* Always: also this run's name on what it stops (a later pod of the same name is another run). */}}
- name: CLEANSLATE_POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- end -}}

{{/* RBAC for Events: create only (kube-rs patches only a repeat of the same Event, which one run never sends). */}}
{{- define "cleanslate.eventsRule" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.cleanup.events.enabled }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}
{{- end -}}
