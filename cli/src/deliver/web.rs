//! The HTTP client and the URL handling every network command shares.

use std::time::Duration;

use crate::output::CliError;

/// A client for confirmation endpoints and downloads: rustls (ring), redirects followed,
/// a connect timeout; per-request timeouts are set by the callers.
pub fn client() -> Result<reqwest::Client, CliError> {
    store::bucket::install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("peaqos/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Input(format!("cannot set up the HTTP client: {e}")))
}

/// `url` with `segment` appended to its path; the query (a capability token, a signature)
/// is kept, as the reference keeps it on every fetch.
pub fn join_path(url: &reqwest::Url, segment: &str) -> reqwest::Url {
    let mut joined = url.clone();
    let path = format!("{}/{segment}", url.path().trim_end_matches('/'));
    joined.set_path(&path);
    joined
}

/// `url` without its query, which may carry a credential: what may be printed.
pub fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(None);
        format!("{shown}?<redacted>")
    } else {
        shown.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_stays_on_every_fetch_and_is_never_shown() {
        let url = reqwest::Url::parse("http://127.0.0.1:9/orders/o-1?token=abc&x=1").unwrap();
        assert_eq!(
            join_path(&url, "manifest.json").as_str(),
            "http://127.0.0.1:9/orders/o-1/manifest.json?token=abc&x=1"
        );
        assert_eq!(redact(&url), "http://127.0.0.1:9/orders/o-1?<redacted>");
        let bare = reqwest::Url::parse("http://h/p/").unwrap();
        assert_eq!(join_path(&bare, "a.bin").as_str(), "http://h/p/a.bin");
    }
}
