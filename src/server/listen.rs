//! The services and the listeners they are served on: the tower stack
//! (metrics, admission), TLS on TCP, the Unix socket's `:authority` fix, and
//! ManageKey on its own address when asked.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use super::settings::{RateLimitServiceAt, ServeConfig};
use super::{local_addr, StartError};
use crate::gate::{Budgets, Gate};
use crate::grpc::envoy_service::authorization_server::AuthorizationServer;
use crate::grpc::pb::admin_server::AdminServer;
use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::manage_key_server::ManageKeyServer;
use crate::grpc::{
    AdminService, AuthorizeService, CheckContext, ExtAuthzService, ManageKeyService,
};
use crate::manage::Manager;
use crate::readiness::Readiness;
use crate::{grpc, telemetry};

/// Where a listener's peers are. On this host (loopback, the Unix socket)
/// the kernel closes a dead peer's connections at once, so keepalive pings
/// would find nothing; they cost ~0.9 K instructions per request (hyper
/// stamps every frame with the time and polls its ping timer, issue #38).
/// Across a network a peer can vanish silently: pinged there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    Local,
    Remote,
}

impl Peer {
    pub(super) fn at(addr: std::net::SocketAddr) -> Peer {
        if addr.ip().is_loopback() {
            Peer::Local
        } else {
            Peer::Remote
        }
    }

    pub(super) fn keepalive(self, interval: std::time::Duration) -> Option<std::time::Duration> {
        (self == Peer::Remote).then_some(interval)
    }
}

/// The gRPC sockets, bound before anything is served.
pub(super) struct GrpcListeners {
    pub tcp: Option<tokio::net::TcpListener>,
    pub uds: Option<(tokio::net::UnixListener, PathBuf)>,
    pub manage_tcp: Option<tokio::net::TcpListener>,
    pub rate_limits_tcp: Option<tokio::net::TcpListener>,
}

/// What each listener serves: the decisions (and, unless ManageKey has its
/// own address, management), management alone, and Envoy's rate-limit
/// service where the operator put it (its own address, or the Unix socket).
pub(super) struct Services {
    hot: Routes,
    manage_only: Option<Routes>,
    /// The Unix socket's: the hot routes, with the rate-limit service when
    /// it is served there.
    uds: Routes,
    /// The rate-limit service's own listener's.
    rate_limits_only: Option<Routes>,
}

impl Services {
    pub(super) fn new(
        config: &ServeConfig,
        context: Arc<CheckContext>,
        manager: Arc<Manager>,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> Result<Services, StartError> {
        let limits = &config.limits;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let base = Routes::new(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let authorize = AuthorizeServer::new(AuthorizeService {
            context: context.clone(),
        })
        .max_decoding_message_size(limits.max_message_bytes);
        let rate_limits = config.rate_limit_service.as_ref().map(|service| {
            grpc::RateLimitServiceServer::new(grpc::RateLimitsService {
                context: context.clone(),
                max_hits: service.max_hits,
            })
            .max_decoding_message_size(limits.max_message_bytes)
        });
        let ext_authz = AuthorizationServer::new(ExtAuthzService {
            context,
            config: config.ext_authz.clone(),
        })
        .max_decoding_message_size(limits.ext_authz_max_message_bytes);
        let admin = AdminServer::new(AdminService {
            manager: manager.clone(),
        });
        let manage = ManageKeyServer::new(ManageKeyService {
            manager,
            leak_action: config.leak_action,
        })
        .max_decoding_message_size(limits.max_message_bytes);
        let hot = base.clone().add_service(authorize).add_service(ext_authz);
        let (hot, manage_only) = match config.manage_listen {
            None => (hot.add_service(manage).add_service(admin), None),
            Some(_) => (
                hot,
                Some(base.clone().add_service(manage).add_service(admin)),
            ),
        };
        let at = config
            .rate_limit_service
            .as_ref()
            .map(|service| &service.at);
        let (uds, rate_limits_only) = match (at, rate_limits) {
            (Some(RateLimitServiceAt::Uds), Some(service)) => {
                (hot.clone().add_service(service), None)
            }
            (Some(RateLimitServiceAt::Tcp(_)), Some(service)) => {
                (hot.clone(), Some(base.add_service(service)))
            }
            _ => (hot.clone(), None),
        };
        Ok(Services {
            hot,
            manage_only,
            uds,
            rate_limits_only,
        })
    }

    /// Serves on every bound listener until `stopped()` resolves.
    pub(super) fn spawn<F>(
        self,
        config: &ServeConfig,
        listeners: GrpcListeners,
        gate: &Arc<crate::gate::Gate>,
        stopped: &impl Fn() -> F,
    ) -> Result<tokio::task::JoinSet<Result<(), tonic::transport::Error>>, StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let GrpcListeners {
            tcp,
            uds,
            manage_tcp,
            rate_limits_tcp,
        } = listeners;
        let limits = &config.limits;
        let layers = layers(gate);
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let router =
            |tls: Option<&tonic::transport::ServerTlsConfig>, routes: &Routes, peer: Peer| {
                let mut server = tonic::transport::Server::builder()
                    .max_concurrent_streams(limits.http2_max_concurrent_streams)
                    .http2_max_local_error_reset_streams(Some(
                        limits.http2_max_local_error_reset_streams,
                    ))
                    .http2_keepalive_interval(peer.keepalive(limits.http2_keepalive_interval))
                    .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
                    // hyper's default, stated: the socket adapter stops at the same bound.
                    .http2_max_header_list_size(Some(crate::uds::MAX_HEADER_LIST as u32));
                if let Some(tls) = tls {
                    server = server.tls_config(tls.clone())?;
                }
                Ok::<_, tonic::transport::Error>(
                    server.layer(layers.clone()).add_routes(routes.clone()),
                )
            };
        let mut servers = tokio::task::JoinSet::new();
        // TCP routers carry TLS when it is configured; the Unix socket never does.
        if let Some(listener) = tcp {
            let addr = local_addr(&listener);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let router = router(tls.as_ref(), &self.hot, Peer::at(addr))?;
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped()));
            tracing::info!(addr = %addr, data_dir = %config.data_dir.display(), tls = tls.is_some(), "scopegate listening");
        }
        if let Some((listener, path)) = uds {
            // Each connection gets the `:authority` fix (see uds/mod.rs).
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                |accepted| accepted.map(crate::uds::UdsConnection::new),
            );
            let router = router(None, &self.uds, Peer::Local)?;
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped()));
            tracing::info!(path = %path.display(), "scopegate listening on unix socket");
        }
        if let (Some(listener), Some(routes)) = (manage_tcp, &self.manage_only) {
            let addr = local_addr(&listener);
            if !addr.ip().is_loopback() && tls.is_none() {
                tracing::warn!(addr = %addr, "ManageKey is exposed on a non-loopback address without TLS");
            }
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let router = router(tls.as_ref(), routes, Peer::at(addr))?;
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped()));
            tracing::info!(addr = %addr, "ManageKey listening");
        }
        if let (Some(listener), Some(routes)) = (rate_limits_tcp, &self.rate_limits_only) {
            let addr = local_addr(&listener);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let router = router(tls.as_ref(), routes, Peer::at(addr))?;
            servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped()));
            tracing::info!(addr = %addr, "rate-limit service listening");
        }
        if config.manage_listen.is_none() && tls.is_none() {
            if let Some(addr) = config.listen.filter(|addr| !addr.ip().is_loopback()) {
                tracing::warn!(addr = %addr, "ManageKey is exposed on a non-loopback address without TLS");
            }
        }
        Ok(servers)
    }
}

type Layers = tower::ServiceBuilder<
    tower::layer::util::Stack<
        crate::gate::GateLayer,
        tower::layer::util::Stack<telemetry::GrpcMetricsLayer, tower::layer::util::Identity>,
    >,
>;

/// The tower stack, outermost first.
fn layers(gate: &Arc<crate::gate::Gate>) -> Layers {
    tower::ServiceBuilder::new()
        // Count every request by method and status, including refused ones.
        .layer(telemetry::GrpcMetricsLayer)
        // The one gate (readiness, each kind of work's budget, management's
        // deadline), shared with the REST and console edge.
        .layer(crate::gate::GateLayer::new(gate.clone()))
}

/// The one gate every door's requests pass (readiness, budgets, deadline).
pub(super) fn gate(config: &ServeConfig, readiness: &Arc<Readiness>) -> Arc<Gate> {
    Arc::new(Gate::new(
        readiness.clone(),
        Budgets {
            decisions: config.limits.max_concurrent_requests,
            manage: config.limits.max_concurrent_manage,
            rate_limits: config.limits.max_concurrent_rate_limits,
        },
        config.limits.request_timeout,
    ))
}

/// The HTTP doors, spawned: the REST API and console, and the forward-auth
/// and AuthZEN door, each on its listener if it has one.
pub(super) fn spawn_http<F>(
    config: &ServeConfig,
    (rest, forward_auth): (
        Option<tokio::net::TcpListener>,
        Option<tokio::net::TcpListener>,
    ),
    (manager, context, gate): (&Arc<Manager>, &Arc<CheckContext>, &Arc<Gate>),
    stopped: &impl Fn() -> F,
) -> Result<Vec<tokio::task::JoinHandle<std::io::Result<()>>>, StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let tls = || {
        config
            .tls
            .as_ref()
            .map(crate::http::tls_acceptor)
            .transpose()
            .map_err(|(path, reason)| StartError::Tls { path, reason })
    };
    let mut servers = Vec::new();
    if let Some(listener) = rest {
        let api = Arc::new(crate::http::RestApi {
            manager: manager.clone(),
            gate: gate.clone(),
            timeout: config.limits.request_timeout,
            leaks: crate::http::leaks::LeakIntake::start(
                config.leak_action,
                config.github_scanning_keys.clone(),
            ),
        });
        let serving = crate::http::serve(listener, api, tls()?, stopped());
        servers.push(tokio::spawn(serving));
    }
    if let (Some(listener), Some(at)) = (forward_auth, &config.forward_auth) {
        let door = Arc::new(crate::http::forward_auth::ForwardAuth {
            context: context.clone(),
            gate: gate.clone(),
            proxy: config.ext_authz.clone(),
            path_prefix: at.path_prefix.clone(),
            trusted_proxies: at.trusted_proxies.clone(),
            cost_header: at.cost_header.clone(),
            timeout: config.limits.request_timeout,
        });
        let serving = crate::http::forward_auth::serve(listener, door, tls()?, stopped());
        servers.push(tokio::spawn(serving));
    }
    Ok(servers)
}

fn load_tls(
    (cert, key): &(PathBuf, PathBuf),
) -> Result<tonic::transport::ServerTlsConfig, StartError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|error| StartError::Tls {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
    };
    let pem = read(cert)?;
    record_cert_expiry(&pem);
    let identity = tonic::transport::Identity::from_pem(pem, read(key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// The serving certificate's notAfter, as a gauge the expiry alert reads
/// (a certificate that does not parse is left to the TLS stack to refuse).
fn record_cert_expiry(pem: &[u8]) {
    use rustls_pki_types::pem::PemObject;
    use x509_cert::der::Decode;
    let Some(Ok(der)) = rustls_pki_types::CertificateDer::pem_slice_iter(pem).next() else {
        return;
    };
    if let Ok(certificate) = x509_cert::Certificate::from_der(&der) {
        let not_after = certificate
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration();
        metrics::gauge!(crate::telemetry::TLS_CERT_EXPIRY_SECONDS).set(not_after.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn only_peers_across_a_network_are_pinged() {
        let every = std::time::Duration::from_secs(30);
        for (addr, pinged) in [
            ("127.0.0.1:50051", false),
            ("127.9.9.9:50051", false),
            ("[::1]:50051", false),
            ("0.0.0.0:50051", true),
            ("10.0.0.5:50051", true),
            ("[::]:50051", true),
        ] {
            let keepalive = Peer::at(addr.parse().unwrap()).keepalive(every);
            assert_eq!(keepalive.is_some(), pinged, "{addr}");
        }
        assert_eq!(Peer::Local.keepalive(every), None);
    }
}
