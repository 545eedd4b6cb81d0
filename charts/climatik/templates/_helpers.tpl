{{/* Chart name, cut to the 63 characters a label value allows. */}}
{{- define "climatik.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name. Kept short enough that "<prefix>-freqtuning-recommender"
still fits a label value.
*/}}
{{- define "climatik.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "climatik.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "climatik.labels" -}}
helm.sh/chart: {{ include "climatik.chart" . }}
app.kubernetes.io/name: {{ include "climatik.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: climatik
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: dict "root" $ "component" "webhook". */}}
{{- define "climatik.selectorLabels" -}}
app.kubernetes.io/name: {{ include "climatik.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "climatik.componentLabels" -}}
{{ include "climatik.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* "<fullname>-<component>": names of a component's objects and ServiceAccount. */}}
{{- define "climatik.componentName" -}}
{{- printf "%s-%s" (include "climatik.fullname" .root) .component }}
{{- end }}

{{- define "climatik.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The webhook Service's DNS names, the serving certificate's SANs. */}}
{{- define "climatik.webhook.dnsNames" -}}
{{- $svc := include "climatik.componentName" (dict "root" . "component" "webhook") -}}
- {{ $svc }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* Secret holding the webhook's tls.crt/tls.key (and ca.crt). */}}
{{- define "climatik.webhook.tlsSecretName" -}}
{{- if eq .Values.webhook.tls.mode "provided" }}
{{- .Values.webhook.tls.provided.secretName }}
{{- else }}
{{- printf "%s-tls" (include "climatik.componentName" (dict "root" . "component" "webhook")) }}
{{- end }}
{{- end }}

{{/*
Restricted container security context: the default for every container but
the node agent's.
*/}}
{{- define "climatik.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod-level settings shared by the Deployments: dict "root" $ "values" .Values.x. */}}
{{- define "climatik.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Role + RoleBinding for leader election leases in the release namespace:
dict "root" $ "component" "powercapping-controller".
*/}}
{{- define "climatik.leaseRbac" -}}
{{- $name := include "climatik.componentName" . }}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}-leader-election
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}

{{/* ClusterRoleBinding of a component's ClusterRole to its ServiceAccount. */}}
{{- define "climatik.clusterRoleBinding" -}}
{{- $name := include "climatik.componentName" . }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}

{{/* A component's ServiceAccount. */}}
{{- define "climatik.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "climatik.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
automountServiceAccountToken: true
{{- end }}

{{/* PodDisruptionBudget: dict "root" $ "component" "x" "values" .Values.x. */}}
{{- define "climatik.pdb" -}}
{{- if .values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "climatik.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "climatik.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* The name of a component's metrics Service: the Prometheus job of its
series when the ServiceMonitor scrapes it. */}}
{{- define "climatik.metricsServiceName" -}}
{{- include "climatik.componentName" . }}-metrics
{{- end }}

{{/* ClusterIP Service for a component's plain-HTTP /metrics. */}}
{{- define "climatik.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "climatik.metricsServiceName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
    climatik.io/metrics: "true"
spec:
  type: ClusterIP
  selector:
    {{- include "climatik.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/* Pod-template env that tells a leader-elected binary its namespace. */}}
{{- define "climatik.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
Deployment of a leader-elected controller binary:
dict "root" $ "component" "x" "values" .Values.x "binary" "x" "args" (list ...).
*/}}
{{- define "climatik.controllerDeployment" -}}
{{- $v := .values }}
{{- $root := .root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "climatik.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "climatik.componentLabels" . | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  {{- if $v.leaderElection.enabled }}
  # Standbys wait on the lease; a rolling update must not run two leaders'
  # worth of pods longer than needed.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- else }}
  # Without leader election two pods would fight over the same objects.
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "climatik.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "climatik.componentLabels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "climatik.componentName" . }}
      {{- with include "climatik.podScheduling" . | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ .component }}
          image: {{ include "climatik.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ .binary | quote }}]
          args:
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            {{- if not $v.leaderElection.enabled }}
            - "--leader-election=false"
            {{- end }}
            {{- with $v.leaderElection.leaseName }}
            - {{ printf "--lease-name=%s" . | quote }}
            {{- end }}
            {{- with $v.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "climatik.podNamespaceEnv" . | nindent 12 }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 10
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 10
            periodSeconds: 20
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "climatik.restrictedSecurityContext" . | nindent 12 }}
{{- end }}

{{- /* The recommender's leader-election Lease, which keeps the entries it
writes alive on nodes whose agent watches it; empty when the agents must
not watch one (no recommender in this release, leader election off, or
freqtuner.entryLease.enabled false). Its default name is the binary's. */}}
{{- define "climatik.entryLease" -}}
{{- $r := .Values.recommender }}
{{- if and $r.enabled $r.leaderElection.enabled .Values.freqtuner.entryLease.enabled }}
{{- $r.leaderElection.leaseName | default "climatik-freqtuning-recommender" }}
{{- end }}
{{- end }}
