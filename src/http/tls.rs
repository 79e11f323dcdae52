//! The REST listener's accept loop, plain or over TLS with the certificate
//! and key gRPC serves (`--tls-cert-file`, `--tls-key-file`). Each
//! connection runs on its own task, so a slow client never holds up the
//! accept loop, and has a deadline for its handshake and headers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for the PEM certificate chain and key, or why not.
pub fn acceptor((cert, key): &(PathBuf, PathBuf)) -> Result<TlsAcceptor, (String, String)> {
    let named = |path: &PathBuf, error: &dyn std::fmt::Display| {
        (path.display().to_string(), error.to_string())
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| named(cert, &error))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|error| named(key, &error))?;
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| named(cert, &error))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|error| named(cert, &error))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` (over TLS when given an acceptor) until `shutdown`;
/// connections in progress then finish their current request. Each
/// connection has `deadline` for its TLS handshake and for each request's
/// headers (the gate gives its body the same): a client that stalls is
/// dropped, never kept.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "REST accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, peer, router, deadline).await,
                Some(acceptor) => {
                    // A failed or stalled handshake is the client's problem.
                    if let Ok(Ok(tls)) = tokio::time::timeout(deadline, acceptor.accept(tcp)).await
                    {
                        connection(tls, peer, router, deadline).await;
                    }
                }
            }
        });
    }
}

/// One HTTP/1.1 connection: the peer's address for the handlers, and a
/// deadline for each request's headers.
async fn connection<Io>(io: Io, peer: SocketAddr, router: axum::Router, deadline: Duration)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(request.map(axum::body::Body::new)).await
            }
        });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(deadline)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}
