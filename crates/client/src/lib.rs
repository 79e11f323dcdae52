//! scopegate inside the app, for meshes without an authorization hook
//! (Linkerd, or no mesh): a [`tower::Layer`] that takes the API key from each
//! request, asks scopegate's `Authorize.Check` over one shared tonic channel
//! (TCP or the Unix socket), and either passes the request on with the key's
//! [`Identity`] in its extensions or answers for the app: 401/403/400 with
//! the JSON body ext_authz sends, a gRPC status for gRPC requests, and 503
//! when scopegate cannot answer within the deadline (fail closed).
//!
//! What reaches the app is what was decided: the path scopegate normalized
//! (the app never routes `/v3/billing/%2e%2e/mail/send` as anything but
//! `/v3/mail/send`), no client-sent `x-scopegate-*` header, and no
//! method-override header (the app might act on that method while the
//! scope was chosen for the real one) unless [`ScopegateLayer::allow_method_override`].
//! Put the layer around the router, not on its routes (axum:
//! `Router::new().fallback_service(app).layer(layer)`), so that the app
//! routes after the path was normalized.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use scopegate_client::{connect_unix, ScopegateLayer};
//! let channel = connect_unix("/run/scopegate/grpc.sock")?;
//! // The scope follows scopegate's routes file (method and path) ...
//! let by_route = ScopegateLayer::new(channel.clone());
//! // ... or is fixed for everything behind this layer.
//! let mail = ScopegateLayer::new(channel).scopes(["mail.send"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tonic::transport::{Channel, Endpoint};

use scopegate_protocol as pb;

use pb::authorize_client::AuthorizeClient;
pub use pb::Decision;

/// How long a request waits for scopegate's answer unless told otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);

/// Headers that ask an upstream to act as another method (as ext_authz
/// refuses them).
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The key that made an allowed request, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key_id: String,
    pub account_id: String,
    /// The key's metadata (set when the key was created).
    pub metadata: HashMap<String, String>,
}

/// A lazy channel to scopegate on TCP (`http://127.0.0.1:50051`); it
/// connects on first use and reconnects by itself.
pub fn connect_tcp(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?.connect_lazy())
}

/// A lazy channel to scopegate's Unix socket (`serve --uds PATH`).
pub fn connect_unix(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    let path = path.into();
    Ok(
        Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
            move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            },
        )),
    )
}

/// What a request must hold.
#[derive(Clone)]
enum Required {
    /// scopegate's route table maps the method and path to a scope.
    Route,
    /// Every one of these scopes.
    Scopes(Arc<[String]>),
}

type ClientIp = Arc<dyn Fn(&http::Extensions, &HeaderMap) -> Option<IpAddr> + Send + Sync>;

/// The layer: cheap to clone; every service it makes shares one channel.
#[derive(Clone)]
pub struct ScopegateLayer {
    client: AuthorizeClient<Channel>,
    required: Required,
    deadline: Duration,
    client_ip: Option<ClientIp>,
    allow_method_override: bool,
}

impl ScopegateLayer {
    /// Checks each request by its method and path (scopegate's routes file),
    /// with a [`DEFAULT_DEADLINE`].
    pub fn new(channel: Channel) -> ScopegateLayer {
        ScopegateLayer {
            client: AuthorizeClient::new(channel),
            required: Required::Route,
            deadline: DEFAULT_DEADLINE,
            client_ip: None,
            allow_method_override: false,
        }
    }

    /// Lets `X-HTTP-Method-Override` and its kin through (as the routes
    /// file's `allow_method_override` does for ext_authz): only for an app
    /// that ignores them.
    pub fn allow_method_override(mut self) -> ScopegateLayer {
        self.allow_method_override = true;
        self
    }

    /// Requires these scopes instead of asking the routes file.
    pub fn scopes<I, S>(mut self, scopes: I) -> ScopegateLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required = Required::Scopes(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// How long to wait for scopegate before answering 503.
    pub fn deadline(mut self, deadline: Duration) -> ScopegateLayer {
        self.deadline = deadline;
        self
    }

    /// Where the request came from, for keys with an address allowlist
    /// (without it such keys are denied). Take it from what your server saw
    /// (axum's `ConnectInfo`, tonic's `TcpConnectInfo`), never from a header
    /// the client sets.
    pub fn client_ip(
        mut self,
        from: impl Fn(&http::Extensions, &HeaderMap) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> ScopegateLayer {
        self.client_ip = Some(Arc::new(from));
        self
    }
}

impl<S> tower::Layer<S> for ScopegateLayer {
    type Service = Scopegate<S>;

    fn layer(&self, inner: S) -> Scopegate<S> {
        Scopegate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around the app's.
#[derive(Clone)]
pub struct Scopegate<S> {
    inner: S,
    layer: ScopegateLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Scopegate<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was not polled ready stays behind (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let grpc = is_grpc(request.headers());
            if let Some(denied) = layer.refuse_override(request.headers()) {
                return Ok(denied.response(grpc).map(Either::Right));
            }
            let check = layer.check_request(&request);
            match layer.ask(check).await {
                Ok((identity, canonical)) => {
                    // The credential goes no further than the check, nor
                    // anything a client set in scopegate's name.
                    let headers = request.headers_mut();
                    headers.remove(header::AUTHORIZATION);
                    let reserved: Vec<header::HeaderName> = headers
                        .keys()
                        .filter(|name| name.as_str().starts_with("x-scopegate-"))
                        .cloned()
                        .collect();
                    for name in reserved {
                        headers.remove(name);
                    }
                    if let Some(path) = canonical {
                        if let Err(denied) = with_path(&mut request, &path) {
                            return Ok(denied.response(grpc).map(Either::Right));
                        }
                    }
                    request.extensions_mut().insert(identity);
                    inner
                        .call(request)
                        .await
                        .map(|response| response.map(Either::Left))
                }
                Err(denied) => Ok(denied.response(grpc).map(Either::Right)),
            }
        })
    }
}

/// Why a request does not reach the app.
struct Denied {
    status: StatusCode,
    message: String,
    /// Seconds, for a 429.
    retry_after: Option<i64>,
}

/// The request's URI with `path` (scopegate's normalized one), its query
/// kept.
fn with_path<B>(request: &mut Request<B>, path: &str) -> Result<(), Denied> {
    let uri = request.uri();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| Denied {
        status: StatusCode::BAD_REQUEST,
        message: "the request path cannot be passed on as scopegate normalized it".into(),
        retry_after: None,
    })?);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| Denied {
        status: StatusCode::BAD_REQUEST,
        message: "the request path cannot be passed on as scopegate normalized it".into(),
        retry_after: None,
    })?;
    Ok(())
}

impl ScopegateLayer {
    /// A method-override header, refused when the scope follows the route.
    fn refuse_override(&self, headers: &HeaderMap) -> Option<Denied> {
        if self.allow_method_override || !matches!(self.required, Required::Route) {
            return None;
        }
        let name = METHOD_OVERRIDE_HEADERS
            .iter()
            .find(|name| headers.contains_key(**name))?;
        Some(Denied {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the {name} header is refused: the scope was chosen for the request's own method"
            ),
            retry_after: None,
        })
    }

    /// What to ask scopegate about this request.
    fn check_request<B>(&self, request: &Request<B>) -> pb::CheckRequest {
        let token = bearer(request.headers()).unwrap_or_default().to_owned();
        let (scopes, http) = match &self.required {
            Required::Scopes(scopes) => (scopes.to_vec(), None),
            Required::Route => (
                Vec::new(),
                Some(pb::HttpRequest {
                    method: request.method().as_str().to_owned(),
                    path: request
                        .uri()
                        .path_and_query()
                        .map_or("/", |path| path.as_str())
                        .to_owned(),
                }),
            ),
        };
        let client_ip = self
            .client_ip
            .as_ref()
            .and_then(|from| from(request.extensions(), request.headers()))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        pb::CheckRequest {
            token,
            scopes,
            http,
            client_ip,
            cost: None,
        }
    }

    /// The key's identity and, when scopegate normalized the path, that path.
    async fn ask(&self, check: pb::CheckRequest) -> Result<(Identity, Option<String>), Denied> {
        let mut check = tonic::Request::new(check);
        check.set_timeout(self.deadline);
        let unavailable = |reason: String| Denied {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("authorization is unavailable: {reason}"),
            retry_after: None,
        };
        let answer = tokio::time::timeout(self.deadline, self.client.clone().check(check))
            .await
            .map_err(|_| unavailable("scopegate did not answer in time".into()))?
            .map_err(|status| unavailable(status.message().to_owned()))?
            .into_inner();
        if answer.allowed {
            let canonical = (!answer.path.is_empty()).then_some(answer.path);
            return Ok((
                Identity {
                    key_id: answer.key_id,
                    account_id: answer.account_id,
                    metadata: answer.metadata,
                },
                canonical,
            ));
        }
        Err(Denied {
            status: http_status(answer.decision()),
            retry_after: answer.retry_after.map(|after| after.seconds.max(1)),
            message: answer.message,
        })
    }
}

/// The HTTP status ext_authz gives each decision.
fn http_status(decision: Decision) -> StatusCode {
    match decision {
        Decision::MissingToken
        | Decision::MalformedToken
        | Decision::UnknownKey
        | Decision::Expired
        | Decision::Disabled => StatusCode::UNAUTHORIZED,
        Decision::InvalidPath | Decision::MethodOverride => StatusCode::BAD_REQUEST,
        Decision::RateLimited | Decision::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    }
}

impl Denied {
    fn response(self, grpc: bool) -> Response<Full<Bytes>> {
        if grpc {
            return self.grpc_response();
        }
        let body = format!(
            "{{\"errors\":[{{\"field\":null,\"message\":{}}}]}}",
            json_string(&self.message)
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scopegate\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// A gRPC "trailers-only" answer: HTTP 200 with the status in headers.
    fn grpc_response(self) -> Response<Full<Bytes>> {
        let code = match self.status {
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
            _ => tonic::Code::PermissionDenied,
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        // Status::add_header writes grpc-status and a percent-encoded grpc-message.
        let _ = tonic::Status::new(code, self.message).add_header(headers);
        response
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer SG.a.b"),
        );
        assert_eq!(bearer(&headers), Some("SG.a.b"));
    }

    #[test]
    fn messages_are_json_strings() {
        assert_eq!(json_string("a \"b\"\\\n"), "\"a \\\"b\\\"\\\\\\u000a\"");
    }
}
