//! One delivery attempt: a signed POST with a time bound, its answer's
//! status read and its body left unread (a receiver cannot make the
//! sidecar hold more than the headers). Connections go only to addresses
//! the guard allows, checked on every resolved address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::guard;

type Https = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The outbound HTTP client of webhook deliveries.
#[derive(Clone)]
pub struct Sender {
    client: Client<Https, axum::body::Body>,
    allow_private: bool,
    timeout: Duration,
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Another answer, or none (the reason).
    Failed(u16, String),
}

/// One signed message.
pub struct Message<'a> {
    pub url: &'a str,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: String,
    pub body: &'a [u8],
}

impl Sender {
    pub fn new(allow_private: bool, timeout: Duration) -> Sender {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        Sender {
            client,
            allow_private,
            timeout,
        }
    }

    pub async fn send(&self, message: Message<'_>) -> Attempt {
        let uri = match guard::check_url(message.url, self.allow_private) {
            Ok(uri) => uri,
            Err(reason) => return Attempt::Failed(0, format!("refused: the URL {reason}")),
        };
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("scopegate-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", message.id)
            .header("webhook-timestamp", message.timestamp.to_string())
            .header("webhook-signature", message.signature)
            .body(axum::body::Body::from(message.body.to_vec()));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                return Attempt::Failed(0, format!("could not build the request: {error}"))
            }
        };
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Attempt::Failed(0, format!("no answer within {:?}", self.timeout)),
            Ok(Err(error)) => Attempt::Failed(0, describe(&error)),
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_success() {
                    Attempt::Delivered
                } else {
                    Attempt::Failed(status.as_u16(), format!("answered {status}"))
                }
            }
        }
    }
}

/// The innermost cause of a client error (where the guard's refusal is).
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    let mut last = error.to_string();
    while let Some(cause) = source {
        last = cause.to_string();
        source = cause.source();
    }
    last
}

/// Resolves a host and keeps only the addresses the guard allows.
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

type Resolved = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for GuardedResolver {
    type Response = Resolved;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resolved, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| allow_private || !guard::is_private(addr.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("refused: {host} resolves only to private or local addresses (--webhook-allow-private allows them)"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tower::Service;

    use super::*;

    /// A name that resolves to loopback is refused when connecting, whatever
    /// the URL said (DNS cannot smuggle a private address in).
    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect() {
        let name = Name::from_str("localhost").unwrap();
        let refused = GuardedResolver {
            allow_private: false,
        }
        .call(name.clone())
        .await
        .unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("--webhook-allow-private"));
        let allowed: Vec<_> = GuardedResolver {
            allow_private: true,
        }
        .call(name)
        .await
        .unwrap()
        .collect();
        assert!(allowed.iter().all(|addr| addr.ip().is_loopback()) && !allowed.is_empty());
    }

    /// A URL the guard refuses is never requested.
    #[tokio::test]
    async fn a_refused_url_is_a_failed_attempt_without_a_connection() {
        let sender = Sender::new(false, Duration::from_secs(1));
        let attempt = sender
            .send(Message {
                url: "http://169.254.169.254/latest",
                id: "msg_1",
                timestamp: 1,
                signature: String::new(),
                body: b"{}",
            })
            .await;
        match attempt {
            Attempt::Failed(0, reason) => assert!(reason.starts_with("refused"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
