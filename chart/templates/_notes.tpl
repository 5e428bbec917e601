{{/*
What Helm prints after an install or upgrade of this chart. Helm never shows a dependency's NOTES, so
a parent chart includes the same text in its own NOTES.txt:
  {{ include "cleanslate.notes" . }}
It reads cleanslate's values under its dependency name or alias (cleanslate.values).
*/}}
{{- define "cleanslate.notes" -}}
{{- $v := include "cleanslate.values" . | fromYaml -}}
{{- if $v.cleanup.enabled }}
cleanslate is ON for {{ .Release.Name }} (environment {{ $v.cleanup.environment | quote }}{{ if $v.cleanup.dryRun }}, DRY RUN{{ end }}).

On {{ join ", " $v.cleanup.hook.events }} the Job {{ include "cleanslate.purgeServiceAccountName" . }}
{{- if $v.cleanup.targets.queue }}
  - purges RabbitMQ queues {{ include "cleanslate.tplList" (dict "list" $v.cleanup.rabbitmq.queues "ctx" .) | replace "," ", " }}{{ with $v.cleanup.rabbitmq.queuePattern }} and /{{ tpl . $ }}/{{ end }} in vhost {{ tpl $v.cleanup.rabbitmq.vhost . | quote }}{{ $dl := toString $v.cleanup.rabbitmq.deadLetters }}{{ if has $dl (list "true" "exact" "reachable") }} (and the dead-letter queues a route proves are theirs: deadLetters {{ $dl }}){{ else if ne $dl "false" }} (their dead-letter queues are reported in the Job's log, not purged){{ end }}
{{- end }}
{{- if $v.cleanup.targets.database }}
  - deletes etcd prefixes {{ include "cleanslate.tplList" (dict "list" $v.cleanup.etcd.prefixes "ctx" .) | replace "," ", " }}{{ with $v.cleanup.etcd.protectedPrefixes }} (keeping {{ include "cleanslate.tplList" (dict "list" . "ctx" $) | replace "," ", " }}){{ end }}
{{- end }}
and records the outcome in the ConfigMap {{ include "cleanslate.markerName" . }}. Gated pods wait for it.

What the last run did, what is still stopped, what to run next (from your machine, kubeconfig):
  cleanslate status {{ .Release.Name }} -n {{ .Release.Namespace }}
Read the marker:
  kubectl -n {{ .Release.Namespace }} get configmap {{ include "cleanslate.markerName" . }} -o jsonpath='{.data}'
Read the Job's log:
  kubectl -n {{ .Release.Namespace }} logs job/{{ include "cleanslate.purgeServiceAccountName" . }}
{{- if $v.cleanup.quiesce.enabled }}
Quiesce is on: before purging, the Job stops the running workloads whose gate reads this marker{{ with include "cleanslate.quiesceWorkloads" . }}
({{ . }} when this was rendered){{ end }}
and waits until their pods are gone; {{ include "cleanslate.resumeServiceAccountName" $ }} starts them after the upgrade,
and a failed purge puts them back at once. If Helm's apply fails after a successful purge (an
immutable field, a webhook), no post-upgrade hook runs and they stay at 0: run
  CLEANSLATE_NAMESPACE={{ $.Release.Namespace }} CLEANSLATE_MARKER={{ include "cleanslate.markerName" $ }} cleanslate resume
(it starts everything stopped for this marker), roll back, or upgrade again.
Purge again now (the workloads are stopped and started again):
{{- else }}
Purge again now (pods are not restarted):
{{- end }}
  helm test {{ .Release.Name }} -n {{ .Release.Namespace }}
{{- $post := list }}
{{- range (list "post-install" "post-upgrade") }}{{ if has . $v.cleanup.hook.events }}{{ $post = append $post . }}{{ end }}{{ end }}
{{- if $post }}

WARNING: the Job runs {{ join " and " $post }}. Do not {{ if has "post-install" $post }}install{{ end }}{{ if eq (len $post) 2 }} or {{ end }}{{ if has "post-upgrade" $post }}upgrade{{ end }} with --wait, --atomic,
--rollback-on-failure (or Flux / Terraform, which wait by default): Helm would wait for the gated
pods, which wait for the {{ join "/" $post }} Job, until --timeout. Use
cleanup.hook.events=[pre-install,pre-upgrade] when RabbitMQ and etcd exist before this release.
{{- end }}
{{- $deadline := include "cleanslate.activeDeadlineSeconds" . | int }}
{{- if gt $deadline 300 }}

The Job may run up to {{ $deadline }} s (activeDeadlineSeconds, every retry included): give helm a
--timeout above that (it waits 5m per hook by default), or it gives up while a retry can still succeed.
{{- end }}
{{- if and (has "pre-upgrade" $v.cleanup.hook.events) (not $v.cleanup.quiesce.enabled) }}

Note: pre-upgrade purges while the previous pods still run; they can refill queues and keys
until they are replaced. cleanup.quiesce.enabled=true stops them first.
{{- end }}
{{- else }}
cleanslate is OFF for {{ .Release.Name }}: no Job, no gate, no RBAC. The apps render unchanged.
{{- end }}
{{- end -}}
