//! Envoy's ext_authz `CheckRequest`, read in place.
//!
//! Envoy sends every header of the client's request and a dozen other
//! attributes; the decision reads the method, the path, the source address
//! and a few headers. Decoding the whole message into owned strings and a
//! hash map was most of an ext_authz Check's cost (BENCHMARKS.md). This
//! reader walks the protobuf wire format once over the received buffer and
//! keeps byte ranges of what the decision reads; every other field is
//! skipped, nothing is copied. Same wire format as
//! `envoy/service/auth/v3/external_auth.proto`; fuzzed against envoy-types'
//! own decoder (`fuzz/fuzz_targets/ext_authz.rs`). The service's codec
//! ([`EnvoyCodec`]) lives here too.

use std::ops::Range;

use bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::envoy_response::EnvoyAnswer;

/// A parsed `CheckRequest`: the buffer and where its useful fields are.
#[derive(Debug, Clone, Default)]
pub struct EnvoyCheck {
    buf: Bytes,
    /// Whether `attributes.request.http` was present.
    has_http: bool,
    method: Range<u32>,
    path: Range<u32>,
    /// `attributes.source.address.socket_address.address`.
    source: Range<u32>,
    /// (name, value) of `http.headers` entries, then `http.header_map`
    /// entries (their `raw_value` when set, else `value`).
    headers: Vec<(Range<u32>, Range<u32>)>,
    /// `attributes.context_extensions["scope"]`, if the proxy set it.
    route_scope: Option<Range<u32>>,
    /// `attributes.context_extensions["cost"]`, if the proxy set it.
    route_cost: Option<Range<u32>>,
}

/// Why a message is not a `CheckRequest`.
#[derive(Debug, PartialEq, Eq)]
pub struct WireError(&'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed CheckRequest: {}", self.0)
    }
}

const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const I32: u64 = 5;
/// Nesting of (deprecated, skipped) groups, as deep as prost allows.
const MAX_GROUP_DEPTH: u32 = 100;

/// One field of a message: its number and, for length-delimited fields,
/// the range of its payload.
struct Field {
    number: u64,
    payload: Option<Range<usize>>,
}

/// Walks the fields of the message in `bytes[range]`.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], range: Range<usize>) -> Fields<'a> {
        Fields {
            bytes,
            at: range.start,
            end: range.end,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes[..self.end].get(self.at) else {
                return Err(WireError("truncated varint"));
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    fn skip(&mut self, count: usize) -> Result<Range<usize>, WireError> {
        let start = self.at;
        let end = start
            .checked_add(count)
            .filter(|end| *end <= self.end)
            .ok_or(WireError("field runs past its message"))?;
        self.at = end;
        Ok(start..end)
    }

    fn next(&mut self) -> Option<Result<Field, WireError>> {
        if self.at >= self.end {
            return None;
        }
        Some(self.field())
    }

    fn field(&mut self) -> Result<Field, WireError> {
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(WireError("field number 0"));
        }
        let payload = self.value(key & 7, number, 0)?;
        Ok(Field { number, payload })
    }

    /// Reads one value of `wire_type`; a group (unknown to every message
    /// here, so skipped as protobuf requires) is read to its end.
    fn value(
        &mut self,
        wire_type: u64,
        number: u64,
        depth: u32,
    ) -> Result<Option<Range<usize>>, WireError> {
        Ok(match wire_type {
            VARINT => {
                self.varint()?;
                None
            }
            I64 => {
                self.skip(8)?;
                None
            }
            LEN => {
                let length = usize::try_from(self.varint()?)
                    .map_err(|_| WireError("length does not fit"))?;
                Some(self.skip(length)?)
            }
            I32 => {
                self.skip(4)?;
                None
            }
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(WireError("groups nested too deep"));
                }
                loop {
                    let key = self.varint()?;
                    let inner = key >> 3;
                    if inner == 0 {
                        return Err(WireError("field number 0"));
                    }
                    if key & 7 == END_GROUP {
                        if inner != number {
                            return Err(WireError("a group ends with another group's number"));
                        }
                        break;
                    }
                    self.value(key & 7, inner, depth + 1)?;
                }
                None
            }
            END_GROUP => return Err(WireError("a group ends that never started")),
            _ => return Err(WireError("unknown wire type")),
        })
    }
}

/// The payload of a length-delimited field, or an error if the field had
/// another wire type.
fn payload(field: &Field) -> Result<Range<usize>, WireError> {
    field.payload.clone().ok_or(WireError(
        "a message or string field is not length-delimited",
    ))
}

fn narrow(range: Range<usize>) -> Range<u32> {
    // The message is at most --ext-authz-max-message-bytes, far below 4 GiB.
    range.start as u32..range.end as u32
}

impl EnvoyCheck {
    /// Reads a `CheckRequest`. Fails on what protobuf itself forbids
    /// (truncation, groups, a field of the wrong wire type, a method or path
    /// that is not UTF-8); unknown fields are skipped.
    pub fn parse(buf: Bytes) -> Result<EnvoyCheck, WireError> {
        let mut check = EnvoyCheck {
            buf: Bytes::new(),
            ..EnvoyCheck::default()
        };
        let bytes = &buf[..];
        // CheckRequest { AttributeContext attributes = 1; }
        let mut fields = Fields::new(bytes, 0..bytes.len());
        while let Some(field) = fields.next() {
            let field = field?;
            if field.number == 1 {
                check.attributes(bytes, payload(&field)?)?;
            }
        }
        let route_scope = check.route_scope.clone().unwrap_or(0..0);
        let route_cost = check.route_cost.clone().unwrap_or(0..0);
        for range in [
            &check.method,
            &check.path,
            &check.source,
            &route_scope,
            &route_cost,
        ] {
            std::str::from_utf8(&bytes[range.start as usize..range.end as usize])
                .map_err(|_| WireError("a string field is not UTF-8"))?;
        }
        check.buf = buf;
        Ok(check)
    }

    /// AttributeContext { Peer source = 1; Request request = 4;
    /// map<string, string> context_extensions = 10; }
    fn attributes(&mut self, bytes: &[u8], range: Range<usize>) -> Result<(), WireError> {
        let mut fields = Fields::new(bytes, range);
        while let Some(field) = fields.next() {
            let field = field?;
            match field.number {
                1 => {
                    // Peer { Address address = 1; } → Address { SocketAddress
                    // socket_address = 1; } → SocketAddress { string address = 2; }
                    let mut range = Some(payload(&field)?);
                    for number in [1, 1, 2] {
                        range = match range {
                            Some(range) => last_field(bytes, range, number)?,
                            None => break,
                        };
                    }
                    if let Some(address) = range {
                        self.source = narrow(address);
                    }
                }
                4 => {
                    // Request { HttpRequest http = 2; }
                    let mut inner = Fields::new(bytes, payload(&field)?);
                    while let Some(field) = inner.next() {
                        let field = field?;
                        if field.number == 2 {
                            self.has_http = true;
                            self.http(bytes, payload(&field)?)?;
                        }
                    }
                }
                10 => {
                    // A map entry: { string key = 1; string value = 2; }; the
                    // last entry of a key wins, as protobuf merges maps.
                    let (name, value) = entry(bytes, payload(&field)?, false)?;
                    match &bytes[name.start as usize..name.end as usize] {
                        b"scope" => self.route_scope = Some(value),
                        b"cost" => self.route_cost = Some(value),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// HttpRequest { string method = 2; map<string, string> headers = 3;
    /// string path = 4; HeaderMap header_map = 13; }
    fn http(&mut self, bytes: &[u8], range: Range<usize>) -> Result<(), WireError> {
        // Envoy sends a dozen or so headers: one allocation for them.
        self.headers.reserve(16);
        let mut fields = Fields::new(bytes, range);
        while let Some(field) = fields.next() {
            let field = field?;
            match field.number {
                2 => self.method = narrow(payload(&field)?),
                4 => self.path = narrow(payload(&field)?),
                3 => {
                    // A map entry: { string key = 1; string value = 2; }
                    let (name, value) = entry(bytes, payload(&field)?, false)?;
                    self.headers.push((name, value));
                }
                13 => {
                    // HeaderMap { repeated HeaderValue headers = 1; }, HeaderValue
                    // { string key = 1; string value = 2; bytes raw_value = 3; }
                    let mut inner = Fields::new(bytes, payload(&field)?);
                    while let Some(field) = inner.next() {
                        let field = field?;
                        if field.number == 1 {
                            let (name, value) = entry(bytes, payload(&field)?, true)?;
                            self.headers.push((name, value));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `attributes.request.http` was present.
    pub fn has_http(&self) -> bool {
        self.has_http
    }

    fn text(&self, range: &Range<u32>) -> &str {
        // Checked in parse().
        std::str::from_utf8(self.slice(range)).unwrap_or("")
    }

    fn slice(&self, range: &Range<u32>) -> &[u8] {
        &self.buf[range.start as usize..range.end as usize]
    }

    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    pub fn path(&self) -> &str {
        self.text(&self.path)
    }

    /// The downstream address Envoy reports, as text ("" if none).
    pub fn source_address(&self) -> &str {
        self.text(&self.source)
    }

    /// The scope the proxy names for this route (`context_extensions`
    /// `scope`, set per route in Envoy's `check_settings`; a client cannot
    /// set it).
    pub fn route_scope(&self) -> Option<&str> {
        self.route_scope.as_ref().map(|range| self.text(range))
    }

    /// What the proxy says this route's requests cost a key with credits
    /// (`context_extensions` `cost`, a whole number; one that is not reads
    /// as unset: the route table's cost applies).
    pub fn route_cost(&self) -> Option<u32> {
        self.route_cost
            .as_ref()
            .and_then(|range| self.text(range).parse().ok())
            .filter(|cost| *cost <= crate::route::MAX_COST)
    }

    /// Every request header as (name, value), in the order sent.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|(name, value)| (self.slice(name), self.slice(value)))
    }
}

/// The payload of the last field `number` in the message at `range` (the
/// last one wins, as protobuf merges them).
fn last_field(
    bytes: &[u8],
    range: Range<usize>,
    number: u64,
) -> Result<Option<Range<usize>>, WireError> {
    let mut found = None;
    let mut fields = Fields::new(bytes, range);
    while let Some(field) = fields.next() {
        let field = field?;
        if field.number == number {
            found = Some(payload(&field)?);
        }
    }
    Ok(found)
}

/// A header entry: (key = 1, value = 2), or with `raw` a HeaderValue whose
/// raw_value (3) wins over value when set.
fn entry(
    bytes: &[u8],
    range: Range<usize>,
    raw: bool,
) -> Result<(Range<u32>, Range<u32>), WireError> {
    let mut name = 0..0;
    let mut value = 0..0;
    let mut raw_value: Option<Range<usize>> = None;
    let mut fields = Fields::new(bytes, range);
    while let Some(field) = fields.next() {
        let field = field?;
        match field.number {
            1 => name = payload(&field)?,
            2 => value = payload(&field)?,
            3 if raw => raw_value = Some(payload(&field)?).filter(|range| !range.is_empty()),
            _ => {}
        }
    }
    Ok((narrow(name), narrow(raw_value.unwrap_or(value))))
}

/// The codec of the ext_authz service: requests are read by [`EnvoyCheck`],
/// responses are already bytes ([`EnvoyAnswer`]).
#[derive(Debug, Clone)]
pub struct EnvoyCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for EnvoyCodec<T, U> {
    fn default() -> Self {
        EnvoyCodec(std::marker::PhantomData)
    }
}

impl Codec for EnvoyCodec<EnvoyAnswer, EnvoyCheck> {
    type Encode = EnvoyAnswer;
    type Decode = EnvoyCheck;
    type Encoder = AnswerEncoder;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

#[derive(Debug)]
pub struct AnswerEncoder;

impl Encoder for AnswerEncoder {
    type Item = EnvoyAnswer;
    type Error = Status;

    fn encode(&mut self, item: EnvoyAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, item.as_bytes());
        Ok(())
    }
}

#[derive(Debug)]
pub struct CheckDecoder;

impl Decoder for CheckDecoder {
    type Item = EnvoyCheck;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<EnvoyCheck>, Status> {
        // The whole message, without a copy (tonic buffers it contiguously).
        let bytes = buf.copy_to_bytes(buf.remaining());
        EnvoyCheck::parse(bytes)
            .map(Some)
            .map_err(|error| Status::invalid_argument(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::config::core::v3::{
        address, Address, HeaderMap, HeaderValue, SocketAddress,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use prost::Message;

    fn full_request() -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "203.0.113.7".into(),
                            port_specifier: Some(
                                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(4321),
                            ),
                            ..Default::default()
                        })),
                    }),
                    principal: "spiffe://x".into(),
                    ..Default::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: "123".into(),
                        method: "PATCH".into(),
                        path: "/v3/ü?x=1".into(),
                        host: "api.example.com".into(),
                        size: 42,
                        body: "{}".into(),
                        headers: [("authorization", "Bearer SG.a.b"), ("x-a", "1")]
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map: Some(HeaderMap {
                            headers: vec![
                                HeaderValue {
                                    key: "x-raw".into(),
                                    value: "ignored".into(),
                                    raw_value: b"r\xffw".to_vec(),
                                },
                                HeaderValue {
                                    key: "x-plain".into(),
                                    value: "plain".into(),
                                    raw_value: vec![],
                                },
                            ],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [
                    ("k".to_string(), "v".to_string()),
                    ("scope".to_string(), "mail.send".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_what_envoy_types_encodes() {
        let check = EnvoyCheck::parse(full_request().encode_to_vec().into()).unwrap();
        assert!(check.has_http());
        assert_eq!(check.method(), "PATCH");
        assert_eq!(check.path(), "/v3/ü?x=1");
        assert_eq!(check.source_address(), "203.0.113.7");
        assert_eq!(check.route_scope(), Some("mail.send"));
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = check
            .headers()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            vec![
                (b"authorization".to_vec(), b"Bearer SG.a.b".to_vec()),
                (b"x-a".to_vec(), b"1".to_vec()),
                (b"x-plain".to_vec(), b"plain".to_vec()),
                (b"x-raw".to_vec(), b"r\xffw".to_vec()),
            ]
        );
    }

    #[test]
    fn empty_and_partial_requests() {
        let empty = EnvoyCheck::parse(Bytes::new()).unwrap();
        assert!(!empty.has_http());
        assert_eq!(
            (empty.method(), empty.path(), empty.source_address()),
            ("", "", "")
        );
        assert_eq!(empty.route_scope(), None);
        let no_http = CheckRequest {
            attributes: Some(AttributeContext::default()),
        };
        assert!(!EnvoyCheck::parse(no_http.encode_to_vec().into())
            .unwrap()
            .has_http());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let good = full_request().encode_to_vec();
        for cut in 1..good.len() {
            // Every truncation either fails or (at a field boundary of the
            // outer message) parses; never panics.
            let _ = EnvoyCheck::parse(Bytes::copy_from_slice(&good[..cut]));
        }
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x0b])).is_err()); // unterminated group
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x0c])).is_err()); // stray group end
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x0b, 0x14])).is_err()); // wrong group end
                                                                                // A group (of an unknown field) is skipped, as prost does.
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x73, 0x08, 0x01, 0x74])).is_ok());
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x08, 0x80])).is_err()); // truncated varint
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x0a, 0x05, 0x00])).is_err()); // past end
        assert!(EnvoyCheck::parse(Bytes::from_static(&[0x08, 0x01])).is_err()); // attributes as varint
                                                                                // A method that is not UTF-8.
        let bad = [0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x12, 0x01, 0xff];
        assert_eq!(
            EnvoyCheck::parse(Bytes::copy_from_slice(&bad)).unwrap_err(),
            WireError("a string field is not UTF-8")
        );
    }
}
