//! Envoy's ext_authz `CheckResponse`, as bytes.
//!
//! An allow is the common answer, and building it as envoy-types messages
//! (a hash map for the metadata `Struct`, a `String` per name and value) cost
//! more than the decision itself. [`Allow`] writes the same message straight
//! into one buffer, sizes computed first; the rarer answers (denials, dry
//! run, unavailable) are built with envoy-types and encoded by prost. Unit
//! tests decode both with envoy-types and compare.

use std::borrow::Cow;

use envoy_types::ext_authz::v3::pb::CheckResponse;
use prost::Message;

/// An encoded `envoy.service.auth.v3.CheckResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyAnswer(Vec<u8>);

impl EnvoyAnswer {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The answer as envoy-types' message (for tests and tools).
    pub fn decode(&self) -> Result<CheckResponse, prost::DecodeError> {
        CheckResponse::decode(&self.0[..])
    }
}

impl From<CheckResponse> for EnvoyAnswer {
    fn from(response: CheckResponse) -> EnvoyAnswer {
        EnvoyAnswer(response.encode_to_vec())
    }
}

/// HeaderValueOption.append_action OVERWRITE_IF_EXISTS_OR_ADD.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

/// An allow: status OK, upstream headers set (overwriting client copies),
/// headers removed, and dynamic metadata (string fields, plus the key's own
/// metadata as a nested struct).
pub struct Allow<'a> {
    pub set_headers: [(&'a str, &'a str); 2],
    pub remove_headers: &'a [Cow<'a, str>],
    /// (field, value); empty values are left out.
    pub metadata: [(&'static str, &'a str); 4],
    pub key_metadata: Option<&'a [(String, String)]>,
    /// Headers for the client's response (`response_headers_to_add`): the
    /// rate-limit headers of a limited key.
    pub response_headers: &'a [(&'static str, String)],
}

impl Allow<'_> {
    pub fn encode(&self) -> EnvoyAnswer {
        let ok = self.ok_response_len();
        let metadata = self.metadata_len();
        // status (1): an empty google.rpc.Status (code OK, no message).
        let total = 2 + field_len(3, ok) + field_len(4, metadata);
        let mut out = Vec::with_capacity(total);
        put_key(&mut out, 1);
        put_varint(&mut out, 0);
        put_key(&mut out, 3);
        put_varint(&mut out, ok as u64);
        for (name, value) in self.set_headers {
            put_header(&mut out, 2, name, value);
        }
        for name in self.remove_headers {
            put_string(&mut out, 5, name);
        }
        for (name, value) in self.response_headers {
            put_header(&mut out, 6, name, value);
        }
        put_key(&mut out, 4);
        put_varint(&mut out, metadata as u64);
        for (field, value) in self.metadata {
            if !value.is_empty() {
                put_string_entry(&mut out, field, value);
            }
        }
        if let Some(pairs) = self.key_metadata {
            let inner = struct_len(pairs);
            // Value { struct_value = 5 }
            let value = field_len(5, inner);
            put_key(&mut out, 1);
            put_varint(&mut out, entry_len("key_metadata", value) as u64);
            put_string(&mut out, 1, "key_metadata");
            put_key(&mut out, 2);
            put_varint(&mut out, value as u64);
            put_key(&mut out, 5);
            put_varint(&mut out, inner as u64);
            for (name, value) in pairs {
                put_string_entry(&mut out, name, value);
            }
        }
        debug_assert_eq!(out.len(), total);
        EnvoyAnswer(out)
    }

    fn ok_response_len(&self) -> usize {
        let headers: usize = self
            .set_headers
            .iter()
            .map(|(name, value)| field_len(2, header_option_len(header_value_len(name, value))))
            .sum();
        let removed: usize = self
            .remove_headers
            .iter()
            .map(|name| string_len(5, name))
            .sum();
        let response: usize = self
            .response_headers
            .iter()
            .map(|(name, value)| field_len(6, header_option_len(header_value_len(name, value))))
            .sum();
        headers + removed + response
    }

    fn metadata_len(&self) -> usize {
        let fields: usize = self
            .metadata
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(field, value)| field_len(1, string_entry_len(field, value)))
            .sum();
        let key_metadata = self.key_metadata.map_or(0, |pairs| {
            field_len(
                1,
                entry_len("key_metadata", field_len(5, struct_len(pairs))),
            )
        });
        fields + key_metadata
    }
}

/// A HeaderValueOption as field `field`, overwriting.
fn put_header(out: &mut Vec<u8>, field: u32, name: &str, value: &str) {
    let header = header_value_len(name, value);
    put_key(out, field);
    put_varint(out, header_option_len(header) as u64);
    put_key(out, 1);
    put_varint(out, header as u64);
    put_string(out, 1, name);
    put_string(out, 2, value);
    // append_action (3), a varint field.
    out.push(3 << 3);
    put_varint(out, OVERWRITE_IF_EXISTS_OR_ADD);
}

/// HeaderValue { key = 1; value = 2 }
fn header_value_len(name: &str, value: &str) -> usize {
    string_len(1, name) + string_len(2, value)
}

/// HeaderValueOption { header = 1; append_action = 3 }
fn header_option_len(header: usize) -> usize {
    field_len(1, header) + 1 + varint_len(OVERWRITE_IF_EXISTS_OR_ADD)
}

/// Struct { map<string, Value> fields = 1 } of string values.
fn struct_len(pairs: &[(String, String)]) -> usize {
    pairs
        .iter()
        .map(|(name, value)| field_len(1, string_entry_len(name, value)))
        .sum()
}

/// A map entry { key = 1; Value value = 2 } whose Value is `value` bytes long.
fn entry_len(name: &str, value: usize) -> usize {
    string_len(1, name) + field_len(2, value)
}

/// A map entry whose Value is { string_value = 3 }. The value is a oneof
/// member, so it is written even when empty.
fn string_entry_len(name: &str, value: &str) -> usize {
    entry_len(name, field_len(3, value.len()))
}

fn put_string_entry(out: &mut Vec<u8>, name: &str, value: &str) {
    let value_len = field_len(3, value.len());
    put_key(out, 1);
    put_varint(out, entry_len(name, value_len) as u64);
    put_string(out, 1, name);
    put_key(out, 2);
    put_varint(out, value_len as u64);
    put_key(out, 3);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// A length-delimited field's size, key included (field numbers here < 16).
fn field_len(_number: u32, payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

/// A string field's size; proto3 leaves an empty string out.
fn string_len(number: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        field_len(number, text.len())
    }
}

fn put_string(out: &mut Vec<u8>, number: u32, text: &str) {
    if text.is_empty() {
        return;
    }
    put_key(out, number);
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// The key of a length-delimited field numbered below 16 (one byte).
fn put_key(out: &mut Vec<u8>, number: u32) {
    out.push((number << 3 | 2) as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::ext_authz::v3::pb::HeaderAppendAction;
    use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    /// The same answer built with envoy-types, as scopegate did before.
    fn built(allow: &Allow<'_>) -> CheckResponse {
        let string = |value: &str| Value {
            kind: Some(Kind::StringValue(value.into())),
        };
        let mut fields: std::collections::HashMap<String, Value> = allow
            .metadata
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(field, value)| (field.to_string(), string(value)))
            .collect();
        if let Some(pairs) = allow.key_metadata {
            let inner = pairs
                .iter()
                .map(|(name, value)| (name.clone(), string(value)))
                .collect();
            fields.insert(
                "key_metadata".into(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: inner })),
                },
            );
        }
        let mut ok = OkHttpResponseBuilder::new();
        for (name, value) in allow.set_headers {
            ok.add_header(
                name,
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        for name in allow.remove_headers {
            ok.remove_header(name.to_string());
        }
        for (name, value) in allow.response_headers {
            ok.add_response_header(
                *name,
                value.as_str(),
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        let mut response = CheckResponse::new();
        response.set_dynamic_metadata(Some(Struct { fields }));
        response.set_status(tonic::Status::new(tonic::Code::Ok, ""));
        response.set_http_response(ok);
        response
    }

    #[test]
    fn an_allow_decodes_to_what_envoy_types_would_have_built() {
        let long = "v".repeat(300);
        let metadata = vec![
            ("plan".to_string(), "pro".to_string()),
            ("region".to_string(), long.clone()),
            ("empty".to_string(), String::new()),
        ];
        let rate_headers = [
            (
                "x-ratelimit-limit",
                "10, 10;w=60;name=\"default\"".to_string(),
            ),
            ("x-ratelimit-remaining", "3".to_string()),
        ];
        let removed = [
            Cow::Borrowed("authorization"),
            Cow::Owned("x-scopegate-evil".into()),
        ];
        let cases = [
            Allow {
                set_headers: [
                    ("x-scopegate-key-id", "AbCdEf"),
                    ("x-scopegate-account-id", "acme"),
                ],
                remove_headers: &removed,
                metadata: [
                    ("key_id", "AbCdEf"),
                    ("account_id", "acme"),
                    ("scope", "mail.send"),
                    ("decision", "ALLOWED"),
                ],
                key_metadata: Some(&metadata),
                response_headers: &[],
            },
            Allow {
                set_headers: [("x-key", "k"), ("x-account", &long)],
                remove_headers: &[],
                metadata: [
                    ("key_id", "k"),
                    ("account_id", &long),
                    ("scope", ""),
                    ("decision", "ALLOWED"),
                ],
                key_metadata: None,
                response_headers: &rate_headers,
            },
        ];
        for allow in &cases {
            let answer = allow.encode();
            assert_eq!(answer.decode().unwrap(), built(allow));
        }
    }

    #[test]
    fn varint_lengths() {
        for (value, len) in [
            (0, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(value), len, "{value}");
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
        }
    }
}
