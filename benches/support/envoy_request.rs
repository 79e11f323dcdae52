//! A realistic Envoy ext_authz request (a dozen headers, as Envoy sends
//! them), shared by the criterion benches and the load generator.

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

/// Every header of the client's request, as Envoy sends them by default.
pub fn envoy_request(token: &str) -> CheckRequest {
    with_headers(&all_headers(&format!("Bearer {token}")))
}

/// The same request through an Envoy whose ext_authz filter sets
/// `allowed_headers` to what scopegate reads (examples/envoy.yaml): the
/// credential and the method-override headers (Envoy adds the pseudo-headers).
#[allow(dead_code)]
pub fn envoy_request_allowed_headers(token: &str) -> CheckRequest {
    let credential = format!("Bearer {token}");
    let headers = all_headers(&credential);
    let allowed: Vec<_> = headers
        .iter()
        .filter(|(name, _)| name.starts_with(':') || *name == "authorization")
        .copied()
        .collect();
    with_headers(&allowed)
}

fn all_headers(credential: &str) -> [(&'static str, &str); 14] {
    [
        (":authority", "api.example.com"),
        (":method", "POST"),
        (":path", "/v3/mail/send"),
        (":scheme", "https"),
        ("authorization", credential),
        ("content-type", "application/json"),
        ("user-agent", "sendgrid/6.11.0;python"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("content-length", "412"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-request-id", "4f1c1e2a-9b7d-4c55-8a21-0d3f5b6a7c8e"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
}

fn with_headers(headers: &[(&str, &str)]) -> CheckRequest {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v3/mail/send".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
