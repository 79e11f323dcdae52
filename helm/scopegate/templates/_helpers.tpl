{{- define "scopegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "scopegate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "scopegate.adminSecret" -}}
{{- if .Values.adminToken.existingSecret -}}
{{ .Values.adminToken.existingSecret }}
{{- else -}}
{{ include "scopegate.fullname" . }}-admin
{{- end -}}
{{- end -}}

{{/* Whether the pod shares a Unix socket: sidecar mode with transport uds. */}}
{{- define "scopegate.uds" -}}
{{- if and (eq .Values.mode "sidecar") (eq .Values.transport "uds") }}true{{ end -}}
{{- end -}}

{{/* Values that cannot work together fail the install with a reason. */}}
{{- define "scopegate.validate" -}}
{{- if not (has .Values.mode (list "sidecar" "service")) }}
{{- fail (printf "mode: `%s` is not sidecar or service" .Values.mode) }}
{{- end }}
{{- if eq .Values.mode "service" }}
{{- if not (and .Values.fleet.enabled .Values.fleet.endpoints) }}
{{- fail "mode=service runs several replicas that must share their keys: set fleet.enabled=true and fleet.endpoints (etcd)" }}
{{- end }}
{{- if eq .Values.persistence.type "pvc" }}
{{- fail "mode=service keeps each replica's fleet mirror in an emptyDir; persistence.type=pvc is for sidecar mode" }}
{{- end }}
{{- if lt (int .Values.service.replicas) 2 }}
{{- fail "service.replicas: at least 2, so a rollout or a node drain never leaves the proxies without an authorizer" }}
{{- end }}
{{- end }}
{{- if .Values.istio.enabled }}
{{- if and (eq .Values.mode "service") (not .Values.istio.targetRefs) }}
{{- fail "istio.targetRefs: mode=service needs the Gateway or waypoint the CUSTOM policy applies to (Istio ignores a pod selector there)" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.istio.targetRefs }}
{{- fail "istio.targetRefs is for mode=service; in sidecar mode the policy selects the app pods (istio.selector)" }}
{{- end }}
{{- end }}
{{- if and .Values.envoyGateway.enabled (ne .Values.mode "service") }}
{{- fail "envoyGateway.enabled needs mode=service: Envoy Gateway calls one authorizer Service" }}
{{- end }}
{{- if and .Values.envoyGateway.enabled (not .Values.envoyGateway.targetRefs) }}
{{- fail "envoyGateway.targetRefs: name the Gateway or HTTPRoutes the SecurityPolicy applies to" }}
{{- end }}
{{- if eq .Values.mode "service" }}
{{- if and .Values.service.networkPolicy.enabled (not .Values.service.networkPolicy.from) }}
{{- fail "service.networkPolicy.from: list the proxies allowed to call scopegate (NetworkPolicyPeer list); an empty list would let every pod in" }}
{{- end }}
{{- if not (or .Values.service.networkPolicy.enabled .Values.service.tls.secretName .Values.service.meshMtls) }}
{{- fail "mode=service serves Check and ext_authz (bearer tokens) to the cluster: keep service.networkPolicy.enabled with its from, or set service.tls.secretName, or service.meshMtls=true" }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Sidecar mode under Istio: scopegate's own ports stay out of inbound interception. */}}
{{- define "scopegate.istioPodAnnotations" -}}
{{- if and .Values.istio.enabled (eq .Values.mode "sidecar") }}
traffic.sidecar.istio.io/excludeInboundPorts: "{{ .Values.grpcPort }},{{ .Values.managePort }},{{ .Values.metricsPort }}"
{{- end }}
{{- end -}}

{{- define "scopegate.securityContext" -}}
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

{{/* The scopegate container: include it in your Deployment's containers. */}}
{{- define "scopegate.sidecar" -}}
- name: scopegate
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    {{- if eq .Values.mode "service" }}
    # Service mode: the proxies of other pods call in (see service.networkPolicy).
    - --listen=0.0.0.0:{{ .Values.grpcPort }}
    {{- else }}
    - --listen={{ .Values.listenAddress }}:{{ .Values.grpcPort }}
    {{- end }}
    - --manage-listen=127.0.0.1:{{ .Values.managePort }}
    - --metrics-listen=0.0.0.0:{{ .Values.metricsPort }}
    {{- if .Values.httpPort }}
    # The REST API (SendGrid's /v3/api_keys), on loopback like ManageKey.
    - --http-listen=127.0.0.1:{{ .Values.httpPort }}
    {{- else }}
    - --http-listen=none
    {{- end }}
    {{- if .Values.forwardAuth.enabled }}
    {{- if eq .Values.mode "service" }}
    - --forward-auth-listen=0.0.0.0:{{ .Values.forwardAuth.port }}
    {{- else }}
    - --forward-auth-listen=127.0.0.1:{{ .Values.forwardAuth.port }}
    {{- end }}
    {{- with .Values.forwardAuth.trustedProxies }}
    - --forward-auth-trusted-proxies={{ join "," . }}
    {{- end }}
    {{- end }}
    {{- if include "scopegate.uds" . }}
    - --uds={{ .Values.udsPath }}
    {{- end }}
    - --data-dir=/var/lib/scopegate
    - --admin-token-file=/etc/scopegate/admin/token
    {{- if .Values.routes }}
    - --routes=/etc/scopegate/config/routes.toml
    {{- end }}
    {{- if .Values.catalog }}
    - --catalog=/etc/scopegate/config/catalog.toml
    {{- end }}
    - --log-format=json
    {{- if .Values.fleet.enabled }}
    - --store=etcd
    - --etcd-endpoints={{ join "," .Values.fleet.endpoints }}
    - --etcd-prefix={{ .Values.fleet.prefix }}
    {{- if .Values.fleet.tlsSecret }}
    - --etcd-ca-file=/etc/scopegate/etcd-tls/ca.crt
    - --etcd-cert-file=/etc/scopegate/etcd-tls/tls.crt
    - --etcd-key-file=/etc/scopegate/etcd-tls/tls.key
    {{- end }}
    {{- if .Values.fleet.authSecret }}
    - --etcd-user=$(SCOPEGATE_ETCD_USER_NAME)
    - --etcd-password-file=/etc/scopegate/etcd-auth/password
    {{- end }}
    {{- if .Values.fleet.maxStalenessSecs }}
    - --max-staleness-secs={{ .Values.fleet.maxStalenessSecs }}
    {{- end }}
    {{- end }}
    {{- with .Values.rateLimits.redis }}
    - --rate-limit-redis={{ . }}
    {{- end }}
    {{- if and .Values.rateLimits.redis .Values.rateLimits.passwordSecret }}
    - --rate-limit-redis-password-file=/etc/scopegate/redis-auth/password
    {{- end }}
    {{- if .Values.rateLimits.failClosed }}
    - --rate-limit-fail-closed
    {{- end }}
    {{- if not .Values.usage.enabled }}
    - --usage=off
    {{- else if ne (int .Values.usage.flushSecs) 10 }}
    - --usage-flush-secs={{ .Values.usage.flushSecs }}
    {{- end }}
    {{- if and (eq .Values.mode "service") .Values.service.tls.secretName }}
    - --tls-cert-file=/etc/scopegate/tls/tls.crt
    - --tls-key-file=/etc/scopegate/tls/tls.key
    {{- end }}
    {{- range .Values.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- with .Values.workerThreads }}
    - name: SCOPEGATE_WORKER_THREADS
      value: {{ . | quote }}
    {{- end }}
    - name: SCOPEGATE_SLED_CACHE_MIB
      value: {{ .Values.sledCacheMiB | quote }}
    {{- if and .Values.fleet.enabled .Values.fleet.authSecret }}
    - name: SCOPEGATE_ETCD_USER_NAME
      valueFrom:
        secretKeyRef:
          name: {{ .Values.fleet.authSecret }}
          key: user
    {{- end }}
  ports:
    - name: grpc
      containerPort: {{ .Values.grpcPort }}
    - name: metrics
      containerPort: {{ .Values.metricsPort }}
    {{- if .Values.forwardAuth.enabled }}
    - name: forward-auth
      containerPort: {{ .Values.forwardAuth.port }}
    {{- end }}
  # Probes use the metrics listener: the gRPC port is on loopback.
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
    periodSeconds: 10
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    periodSeconds: 5
  startupProbe:
    httpGet:
      path: /readyz
      port: metrics
    failureThreshold: 60
    periodSeconds: 1
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- include "scopegate.securityContext" . | nindent 4 }}
  volumeMounts:
    - name: scopegate-data
      mountPath: /var/lib/scopegate
    - name: scopegate-admin
      mountPath: /etc/scopegate/admin
      readOnly: true
    - name: scopegate-config
      mountPath: /etc/scopegate/config
      readOnly: true
    {{- if include "scopegate.uds" . }}
    - name: scopegate-socket
      mountPath: {{ dir .Values.udsPath }}
    {{- end }}
    {{- if and .Values.fleet.enabled .Values.fleet.tlsSecret }}
    - name: scopegate-etcd-tls
      mountPath: /etc/scopegate/etcd-tls
      readOnly: true
    {{- end }}
    {{- if and .Values.fleet.enabled .Values.fleet.authSecret }}
    - name: scopegate-etcd-auth
      mountPath: /etc/scopegate/etcd-auth
      readOnly: true
    {{- end }}
    {{- if and .Values.rateLimits.redis .Values.rateLimits.passwordSecret }}
    - name: scopegate-redis-auth
      mountPath: /etc/scopegate/redis-auth
      readOnly: true
    {{- end }}
    {{- if and (eq .Values.mode "service") .Values.service.tls.secretName }}
    - name: scopegate-tls
      mountPath: /etc/scopegate/tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The volumes the sidecar needs: include them in your pod's volumes. */}}
{{- define "scopegate.volumes" -}}
- name: scopegate-data
  {{- if eq .Values.persistence.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "scopegate.fullname" . }}-data
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: scopegate-admin
  secret:
    secretName: {{ include "scopegate.adminSecret" . }}
    # scopegate refuses a token file others can read (with fsGroup the
    # kubelet adds read for the pod's group, which is scopegate's own).
    defaultMode: 0400
- name: scopegate-config
  configMap:
    name: {{ include "scopegate.fullname" . }}
{{- if include "scopegate.uds" . }}
- name: scopegate-socket
  emptyDir: {}
{{- end }}
{{- if and .Values.fleet.enabled .Values.fleet.tlsSecret }}
- name: scopegate-etcd-tls
  secret:
    secretName: {{ .Values.fleet.tlsSecret }}
    defaultMode: 0400
{{- end }}
{{- if and .Values.fleet.enabled .Values.fleet.authSecret }}
- name: scopegate-etcd-auth
  secret:
    secretName: {{ .Values.fleet.authSecret }}
    defaultMode: 0400
    items:
      - key: password
        path: password
{{- end }}
{{- if and .Values.rateLimits.redis .Values.rateLimits.passwordSecret }}
- name: scopegate-redis-auth
  secret:
    secretName: {{ .Values.rateLimits.passwordSecret }}
    defaultMode: 0400
    items:
      - key: password
        path: password
{{- end }}
{{- if and (eq .Values.mode "service") .Values.service.tls.secretName }}
- name: scopegate-tls
  secret:
    secretName: {{ .Values.service.tls.secretName }}
    defaultMode: 0400
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{/* Envoy's bootstrap, fail closed; same shape as examples/envoy.yaml. */}}
{{- define "scopegate.envoyConfig" -}}
static_resources:
  listeners:
  - name: api
    address:
      socket_address: { address: 0.0.0.0, port_value: {{ .Values.demo.envoy.port }} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: api
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          route_config:
            name: api
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: app }
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
              grpc_service:
                envoy_grpc: { cluster_name: scopegate }
                timeout: 0.25s
              # Send scopegate only the headers it reads (the request's method
              # and path travel as their own fields): the credential, the
              # method-override headers it refuses, and x-scopegate-* so that
              # client-sent copies are stripped. Cookies and the rest never
              # reach the sidecar, and the Check costs less (BENCHMARKS.md).
              allowed_headers:
                patterns:
                - exact: authorization
                - exact: x-api-key   # if scopegate runs with --api-key-header x-api-key
                - exact: x-http-method-override
                - exact: x-http-method
                - exact: x-method-override
                - prefix: x-scopegate-
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: scopegate
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: scopegate
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              {{- if eq .Values.transport "uds" }}
              pipe: { path: {{ .Values.udsPath }} }
              {{- else }}
              socket_address: { address: 127.0.0.1, port_value: {{ .Values.grpcPort }} }
              {{- end }}
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{ .Values.demo.app.port }} }
{{- end -}}
