//! What the webhook state holds, as stored (protobuf, like every record)
//! and where (paths under the store's webhook prefix).

/// One endpoint: where an account's events go, and the secret that signs them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndpointRecord {
    /// `wh_` and 24 hex digits.
    #[prost(string, tag = "1")]
    pub endpoint_id: String,
    #[prost(string, tag = "2")]
    pub account_id: String,
    #[prost(string, tag = "3")]
    pub url: String,
    /// `whsec_<base64>`: signs every delivery (kept to sign; shown once).
    #[prost(string, tag = "4")]
    pub secret: String,
    /// The secret a rotation replaced, still signing beside the new one
    /// until `previous_until_unix_ms`, so receivers can roll.
    #[prost(string, tag = "5")]
    pub previous_secret: String,
    #[prost(int64, tag = "6")]
    pub previous_until_unix_ms: i64,
    /// The event types sent (empty: every type).
    #[prost(string, repeated, tag = "7")]
    pub event_types: Vec<String>,
    #[prost(string, tag = "8")]
    pub description: String,
    #[prost(bool, tag = "9")]
    pub disabled: bool,
    #[prost(int64, tag = "10")]
    pub create_time_unix_ms: i64,
    #[prost(int64, tag = "11")]
    pub update_time_unix_ms: i64,
}

impl EndpointRecord {
    pub fn wants(&self, event_type: &str) -> bool {
        !self.disabled
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// One event on its way to one endpoint (pending), or given up on (dead).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Delivery {
    /// `webhook-id`: the same on every attempt, so receivers drop repeats.
    #[prost(string, tag = "1")]
    pub event_id: String,
    #[prost(string, tag = "2")]
    pub event_type: String,
    /// The key (or role) the event is about: one key's events go in order.
    #[prost(bytes = "vec", tag = "3")]
    pub subject: Vec<u8>,
    /// The body, fixed when the event was queued: every attempt sends the
    /// same bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub attempts: u32,
    #[prost(int64, tag = "6")]
    pub first_attempt_unix_ms: i64,
    #[prost(int64, tag = "7")]
    pub next_attempt_unix_ms: i64,
    /// The last attempt's HTTP status (0: none came back).
    #[prost(uint32, tag = "8")]
    pub last_status: u32,
    #[prost(string, tag = "9")]
    pub last_error: String,
    #[prost(int64, tag = "10")]
    pub queued_unix_ms: i64,
}

pub const ENDPOINTS: &str = "endpoints/";

pub fn endpoint_path(endpoint_id: &str) -> String {
    format!("{ENDPOINTS}{endpoint_id}")
}

/// `pending/<endpoint>/<order>`: in the order the events' changes applied.
pub fn pending_prefix(endpoint_id: &str) -> String {
    format!("pending/{endpoint_id}/")
}

pub fn pending_path(endpoint_id: &str, order: i64) -> String {
    format!("pending/{endpoint_id}/{:020}", order.max(0))
}

pub fn dead_prefix(endpoint_id: &str) -> String {
    format!("dead/{endpoint_id}/")
}

pub fn dead_path(endpoint_id: &str, order: i64) -> String {
    format!("dead/{endpoint_id}/{:020}", order.max(0))
}

/// The order in a pending or dead path.
pub fn order_of(path: &str) -> i64 {
    path.rsplit('/')
        .next()
        .and_then(|order| order.parse().ok())
        .unwrap_or(0)
}
