//! Where a redirect may lead. The client follows redirects itself, one hop
//! at a time (its reqwest policy is `none`), so that where a hop may go and
//! who gets credentials are decided here, not by a library default: never
//! from https to http (the bytes and anything else would travel in clear),
//! and never to a loopback or link-local address — a cloud's metadata
//! service, a sidecar's admin port — unless the configuration names that
//! host (a lab registry on 127.0.0.1 redirecting to itself).
//!
//! A host name is resolved here before the hop; the connection resolves it
//! again, so a name whose answer changes in between (DNS rebinding) is not
//! caught. What a redirect names literally always is.

use std::net::IpAddr;

use reqwest::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use reqwest::{Method, StatusCode};
use url::{Host, Url};

/// Redirects followed for one request at most (reqwest's own default).
pub(super) const MAX_REDIRECTS: usize = 10;

/// Whether `status` asks for the request to be sent elsewhere (`Location`).
pub(super) fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The method of the request a redirect asks for, and whether the body
/// goes along (the fetch standard's choices, which reqwest makes too): 303
/// turns all but HEAD into a GET, 301 and 302 turn a POST into one, 307 and
/// 308 keep both. A dropped body takes its headers with it.
pub(super) fn next_request(status: StatusCode, method: &Method, headers: &mut HeaderMap) -> (Method, bool) {
    let to_get = match status.as_u16() {
        303 => *method != Method::HEAD,
        301 | 302 => *method == Method::POST,
        _ => false,
    };
    if !to_get {
        return (method.clone(), true);
    }
    for h in [CONTENT_TYPE, CONTENT_LENGTH, CONTENT_ENCODING, TRANSFER_ENCODING] {
        headers.remove(h);
    }
    (Method::GET, false)
}

/// Why a redirect is not followed (the target as `scheme://host`).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("to {0}: not http(s)")]
    Scheme(String),
    #[error("to {0}: from https to plain http")]
    Downgrade(String),
    #[error("to {0}: no host")]
    NoHost(String),
    #[error("to {shown}: {ip} is a loopback or link-local address, and the host is not one the configuration names")]
    Internal { shown: String, ip: IpAddr },
}

/// Whether a redirect from `from` may lead to `to`. `named` are the hosts
/// the configuration names (the registry's, its listed token realms') and
/// the one the request started at: those may be anything, the lab's
/// 127.0.0.1 included. Any other host must not be, or resolve to, a
/// loopback, link-local or unspecified address.
pub(super) async fn check(from: &Url, to: &Url, named: &[Host<&str>]) -> Result<(), Refused> {
    let shown = format!("{}://{}", to.scheme(), to.host_str().unwrap_or_default());
    if !matches!(to.scheme(), "http" | "https") {
        return Err(Refused::Scheme(shown));
    }
    if from.scheme() == "https" && to.scheme() == "http" {
        return Err(Refused::Downgrade(shown));
    }
    let Some(host) = to.host() else {
        return Err(Refused::NoHost(shown));
    };
    if named.contains(&host) {
        return Ok(());
    }
    let addresses: Vec<IpAddr> = match host {
        Host::Ipv4(ip) => vec![ip.into()],
        Host::Ipv6(ip) => vec![ip.into()],
        Host::Domain(name) => {
            let port = to.port_or_known_default().unwrap_or(80);
            // A name that does not resolve is left to the connection,
            // which fails on it as on any unreachable host (and is retried
            // like one).
            match tokio::net::lookup_host((name, port)).await {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(_) => return Ok(()),
            }
        }
    };
    match addresses.into_iter().find(|ip| is_internal(*ip)) {
        Some(ip) => Err(Refused::Internal { shown, ip }),
        None => Ok(()),
    }
}

/// Loopback, link-local or unspecified (which reaches the local host), in
/// either family, IPv4 written as IPv6 included.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(v4.into()),
            None => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// (from, to, hosts the configuration names, allowed)
    #[tokio::test]
    async fn redirects_lead_only_where_they_may() {
        let table: [(&str, &str, &[&str], bool); 21] = [
            ("https://reg.example/v2/", "https://203.0.113.7/blob", &[], true),
            ("http://reg.example/v2/", "https://203.0.113.7/blob", &[], true),
            ("http://reg.example/v2/", "http://203.0.113.7/blob", &[], true),
            ("http://reg.example/v2/", "http://10.0.0.5:9000/blob", &[], true),
            ("http://reg.example/v2/", "http://storage.invalid/blob", &[], true), // left to the connection
            ("https://reg.example/v2/", "http://203.0.113.7/blob", &[], false),
            ("https://reg.example/v2/", "http://reg.example/v2/x", &["reg.example"], false),
            ("https://reg.example/v2/", "ftp://203.0.113.7/blob", &[], false),
            ("https://reg.example/v2/", "https://127.0.0.1/", &[], false),
            ("https://reg.example/v2/", "https://127.0.0.2:8443/", &[], false),
            ("http://reg.example/v2/", "http://169.254.169.254/latest/meta-data/", &[], false),
            ("http://reg.example/v2/", "http://[::1]:5000/", &[], false),
            ("http://reg.example/v2/", "http://[fe80::1]/", &[], false),
            ("http://reg.example/v2/", "http://[::ffff:127.0.0.1]/", &[], false),
            ("http://reg.example/v2/", "http://[::ffff:169.254.169.254]/", &[], false),
            ("http://reg.example/v2/", "http://0.0.0.0:5000/", &[], false),
            ("http://reg.example/v2/", "http://localhost:5000/", &[], false), // resolves to loopback
            ("http://127.0.0.1:5000/v2/", "http://127.0.0.1:9000/blob", &["127.0.0.1"], true),
            ("http://127.0.0.1:5000/v2/", "http://127.0.0.2:9000/blob", &["127.0.0.1"], false),
            ("http://localhost:5000/v2/", "http://localhost:9000/blob", &["localhost"], true),
            ("http://[::1]:5000/v2/", "http://[::1]:9000/blob", &["[::1]"], true),
        ];
        for (from, to, named, allowed) in table {
            let named_urls: Vec<Url> = named.iter().map(|h| url(&format!("http://{h}/"))).collect();
            let hosts: Vec<Host<&str>> = named_urls.iter().filter_map(Url::host).collect();
            let got = check(&url(from), &url(to), &hosts).await;
            assert_eq!(got.is_ok(), allowed, "{from} -> {to} {named:?}: {got:?}");
        }
    }

    #[test]
    fn redirected_methods_follow_the_fetch_standard() {
        let table = [
            (303, Method::PUT, Method::GET, false),
            (303, Method::HEAD, Method::HEAD, true),
            (302, Method::POST, Method::GET, false),
            (301, Method::GET, Method::GET, true),
            (302, Method::PUT, Method::PUT, true),
            (307, Method::POST, Method::POST, true),
            (308, Method::PUT, Method::PUT, true),
        ];
        for (status, method, want, body) in table {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
            let got = next_request(StatusCode::from_u16(status).unwrap(), &method, &mut headers);
            assert_eq!(got, (want.clone(), body), "{status} {method}");
            assert_eq!(headers.contains_key(CONTENT_TYPE), body, "{status} {method}: the body's headers go with it");
        }
    }
}
