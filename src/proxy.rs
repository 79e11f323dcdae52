//! What every proxy door shares (ext_authz over gRPC, forward-auth and
//! AuthZEN over HTTP): the header names and switches set on the command
//! line, and one pass over a request's headers for the credential, a
//! method-override header and client-sent `x-scopegate-*` copies.

use std::borrow::Cow;

/// Header names, configurable from the command line.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Extra header carrying the raw token (e.g. `x-api-key`), besides
    /// `authorization: Bearer <token>`. Lower-case.
    pub api_key_header: Option<String>,
    pub key_id_header: String,
    pub account_id_header: String,
    /// Remove the credential header before the request goes upstream.
    pub hide_credentials: bool,
    /// Allow every request, but count, log (sampled) and mark in dynamic
    /// metadata what would have been denied.
    pub dry_run: bool,
    /// Count keys' rate limits here (off where Envoy's rate-limit filter
    /// asks the RateLimitService instead).
    pub count_rate_limits: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            api_key_header: None,
            key_id_header: "x-scopegate-key-id".into(),
            account_id_header: "x-scopegate-account-id".into(),
            hide_credentials: true,
            dry_run: false,
            count_rate_limits: true,
        }
    }
}

/// Client-sent headers with this prefix never reach the upstream.
pub const RESERVED_HEADER_PREFIX: &str = "x-scopegate-";

/// The credential found in the request headers.
pub enum Credential<'a> {
    Missing,
    /// The header it came from (as sent) and the token.
    Token(&'a str, Cow<'a, str>),
    /// Several values, several credential headers, a non-UTF-8 value, or an
    /// `authorization` header that is not `Bearer <token>`.
    Malformed,
}

impl ProxyConfig {
    /// One pass over the request headers: the credential, whether a
    /// method-override header is present, and whether any client-sent
    /// `x-scopegate-*` header is (to be stripped on allow).
    pub fn scan<'a>(&self, headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> HeaderScan<'a> {
        let mut credential = Credential::Missing;
        let mut count = 0;
        let mut method_override = false;
        let mut reserved = false;
        for (name, value) in headers {
            method_override |= METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|header| name.eq_ignore_ascii_case(header.as_bytes()));
            reserved |= is_reserved(name);
            let is_bearer = name.eq_ignore_ascii_case(b"authorization");
            let is_api_key = self
                .api_key_header
                .as_deref()
                .is_some_and(|header| name.eq_ignore_ascii_case(header.as_bytes()));
            if !is_bearer && !is_api_key {
                continue;
            }
            count += 1;
            credential = parse_credential(name, value, is_bearer);
        }
        if count > 1 {
            credential = Credential::Malformed;
        }
        HeaderScan {
            credential,
            method_override,
            reserved,
        }
    }
}

/// Headers with which clients ask an upstream to act on another method.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What the headers say, from [`ProxyConfig::scan`].
pub struct HeaderScan<'a> {
    pub credential: Credential<'a>,
    pub method_override: bool,
    /// A client-sent `x-scopegate-*` header is present.
    pub reserved: bool,
}

/// The token in a credential header: `Bearer <token>` for `authorization`,
/// the raw value for the API-key header.
fn parse_credential<'a>(name: &'a [u8], value: &'a [u8], is_bearer: bool) -> Credential<'a> {
    // Both names matched ASCII text, so the name is UTF-8.
    let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
        return Credential::Malformed;
    };
    // Envoy joins repeated headers with ','; a token never holds one.
    if value.contains(',') {
        return Credential::Malformed;
    }
    let token = if is_bearer {
        match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Credential::Malformed,
        }
    } else {
        value.trim()
    };
    Credential::Token(name, Cow::Borrowed(token))
}

/// A client-sent `x-scopegate-*` header (bytes: a name may hold non-ASCII).
pub fn is_reserved(name: &[u8]) -> bool {
    name.get(..RESERVED_HEADER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes()))
}
