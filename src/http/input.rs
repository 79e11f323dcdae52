//! What a request carries, read strictly: the JSON body (media type, size,
//! syntax, unknown fields), the query string, the caller's headers. Each bad
//! input is a 4xx naming what is wrong.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Bodies larger than this are refused (413): a key's JSON is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body as `T`: JSON only (415 otherwise), at most [`MAX_BODY_BYTES`]
/// (413), well-formed, every field known and of its type (400).
pub async fn json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = bytes(headers, body).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            None,
            "the request body is empty: send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|error| {
        let text = error.to_string();
        // serde names the field it missed or did not know: say which.
        let field = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| text.split(prefix).nth(1))
            .and_then(|rest| rest.split('`').next());
        let message = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("the request body is not valid JSON: {text}")
            }
            _ => text.split(" at line ").next().unwrap_or(&text).to_owned(),
        };
        ApiError::bad_request(field, message)
    })
}

/// The body as `T`, or `T::default()` when there is none.
pub async fn optional_json<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = bytes(headers, body).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(None, format!("the request body is not valid JSON: {error}"))
    })
}

async fn bytes(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        })?;
    if !bytes.is_empty() {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = media.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type `{media}` is not application/json"),
            ));
        }
    }
    Ok(bytes)
}

/// A request body read whole within `timeout` and [`MAX_BODY_BYTES`], read by
/// the gates before a permit is taken (a stalled body holds none); the
/// refusal's status and message otherwise.
pub async fn body_within(
    body: Body,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, (StatusCode, String)> {
    body_up_to(body, timeout, MAX_BODY_BYTES).await
}

/// [`body_within`] with another bound (a leak report: up to 1 MiB).
pub async fn body_up_to(
    body: Body,
    timeout: std::time::Duration,
    max: usize,
) -> Result<axum::body::Bytes, (StatusCode, String)> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The query string's parameters; a repeated one, a bad escape or one
/// outside `known` is a 400.
pub fn query(raw: Option<&str>, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut found = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if !known.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                Some(&name),
                format!("unknown query parameter (known: {})", known.join(", ")),
            ));
        }
        if found.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(
                Some(&name),
                "is given more than once",
            ));
        }
    }
    Ok(found)
}

/// An `application/x-www-form-urlencoded` body (names may repeat).
pub async fn form(headers: &HeaderMap, body: Body) -> Result<Vec<(String, String)>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {MAX_BODY_BYTES} bytes"),
            )
        })?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !bytes.is_empty() && !media.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type `{media}` is not a form"),
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request(None, "the form is not UTF-8"))?;
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// One form-encoded name or value: `+` is a space, `%XX` a byte; a `%`
/// without two hex digits, or bytes that are not UTF-8, are a 400 (the
/// decoder itself would pass them through).
fn decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(at, byte)| {
        *byte == b'%'
            && !bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err(ApiError::bad_request(
            None,
            "the query string has a bad % escape",
        ));
    }
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| ApiError::bad_request(None, "the query string is not UTF-8"))
}

/// `authorization: Bearer <token>`: `Ok(None)` without the header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    crate::token::bearer(value.as_bytes())
        .map(Some)
        .map_err(|message| ApiError::new(StatusCode::UNAUTHORIZED, message))
}

/// SendGrid's `on-behalf-of` header: the account the admin acts in.
pub fn on_behalf_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("on-behalf-of")
        .map(|value| {
            value
                .to_str()
                .map(|text| text.trim().to_owned())
                .map_err(|_| ApiError::bad_request(Some("on-behalf-of"), "is not text"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_refuse_repeats_unknown_names_and_bad_escapes() {
        let known = ["limit", "page_token"];
        let parsed = query(Some("limit=5&page_token=a%2Db"), &known).unwrap();
        assert_eq!(parsed["limit"], "5");
        assert_eq!(parsed["page_token"], "a-b");
        assert_eq!(
            query(Some("limit=1&limit=2"), &known)
                .unwrap_err()
                .field
                .as_deref(),
            Some("limit")
        );
        assert_eq!(
            query(Some("offset=1"), &known)
                .unwrap_err()
                .field
                .as_deref(),
            Some("offset")
        );
        assert!(query(Some("limit=%zz"), &known).is_err());
        assert!(query(Some("limit=%ff"), &known).is_err());
        assert!(query(None, &known).unwrap().is_empty());
    }
}
