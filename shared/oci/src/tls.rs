//! Which certificates a registry's TLS is verified against: the platform's
//! roots by default; only the configured private CA bundle (`ca_file` /
//! `ca_secret_id`) when there is one; nothing at all with `insecure` (the
//! lab only).

/// Applies the trust settings to an HTTP client being built. A bundle
/// without a certificate in it is an error, not a silent fallback.
pub fn configure(
    builder: reqwest::ClientBuilder,
    insecure: bool,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    let mut builder = builder.tls_danger_accept_invalid_certs(insecure);
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)?;
        if certs.is_empty() {
            // from_pem_bundle accepts text without certificates; build an
            // error of the same type from a certificate that cannot parse.
            return Err(reqwest::Certificate::from_pem(b"no certificate").expect_err("not PEM"));
        }
        builder = builder.tls_certs_only(certs);
    }
    Ok(builder)
}
