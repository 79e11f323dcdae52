//! Where webhooks may go. An endpoint URL is `http(s)://host[:port]/path`
//! with no credentials in it; unless `--webhook-allow-private`, no address
//! on this machine or its private networks (loopback, link-local and so the
//! cloud metadata service, RFC 1918, CGNAT, unique-local, multicast,
//! unspecified): a tenant's URL must not reach what only the sidecar can.
//! Checked when an endpoint is saved (literal addresses, `localhost`) and
//! on every connection (each resolved address), so DNS cannot smuggle one in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest endpoint URL taken.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL is refused.
pub fn check_url(url: &str, allow_private: bool) -> Result<http::Uri, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("is longer than {MAX_URL_LEN} bytes"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|error| format!("is not a URL ({error})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials (user:password@)".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !allow_private {
        let private = match host.parse::<IpAddr>() {
            Ok(ip) => is_private(ip),
            Err(_) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                host == "localhost" || host.ends_with(".localhost")
            }
        };
        if private {
            return Err(format!(
                "points at a private or local address ({host}); scopegate refuses those unless started with --webhook-allow-private"
            ));
        }
    }
    Ok(uri)
}

/// Whether `ip` is on this machine or a private network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => private_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(ip),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_local_and_private_targets() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://api.localhost/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let refused = check_url(url, false).unwrap_err();
            assert!(
                refused.contains("--webhook-allow-private"),
                "{url}: {refused}"
            );
            assert!(check_url(url, true).is_ok(), "{url} with the flag");
        }
    }

    #[test]
    fn takes_public_urls_and_refuses_malformed_ones() {
        assert!(check_url("https://hooks.example.com/scopegate?x=1", false).is_ok());
        assert!(check_url("http://93.184.216.34:8080/", false).is_ok());
        for (url, why) in [
            ("ftp://example.com/", "http"),
            ("example.com/hook", "not a URL"),
            ("//example.com/hook", "http"),
            ("https://user:pw@example.com/", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let refused = check_url(url, false).unwrap_err();
            assert!(refused.contains(why), "{url}: {refused}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(3000)), false).is_err());
    }
}
