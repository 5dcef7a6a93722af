//! The proxy environment a VM of a user gets.

use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use protocol::secret::{EnvVars, Secret};

/// Upstream egress proxy settings, from the host's configuration (never from source).
#[derive(Clone)]
pub struct ProxyConfig {
    /// Proxy host name or address as VMs reach it.
    pub host: String,
    /// Basic-auth user name.
    pub username: String,
    /// Basic-auth password.
    pub password: Secret<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

// RFC 3986 userinfo: keep unreserved characters, encode everything else.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Environment for a VM of a user holding egress `port`: `HTTP_PROXY`, `HTTPS_PROXY`, their
/// lower-case twins (CLIs read either), and `NO_PROXY` keeping loopback and the VM subnet direct.
/// Credentials are percent-encoded into the proxy URL; the result's `Debug` shows names only.
pub fn vm_environment(proxy: &ProxyConfig, port: u16, vm_subnet: &str) -> EnvVars {
    let url = format!(
        "http://{}:{}@{}:{port}",
        utf8_percent_encode(&proxy.username, USERINFO),
        utf8_percent_encode(proxy.password.expose(), USERINFO),
        proxy.host
    );
    let no_proxy = format!("localhost,127.0.0.1,{vm_subnet}");
    EnvVars::from_pairs([
        ("HTTP_PROXY", url.clone()),
        ("HTTPS_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("https_proxy", url),
        ("NO_PROXY", no_proxy.clone()),
        ("no_proxy", no_proxy),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_has_all_proxy_variables_with_encoded_credentials() {
        let proxy = ProxyConfig {
            host: "proxy.test".into(),
            username: "fake-user".into(),
            password: Secret::new("fake:p@ss/word".into()),
        };
        let env = vm_environment(&proxy, 10042, "172.16.0.0/24");
        let expected = "http://fake-user:fake%3Ap%40ss%2Fword@proxy.test:10042";
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(
                env.0.get(name).map(String::as_str),
                Some(expected),
                "{name}"
            );
        }
        for name in ["NO_PROXY", "no_proxy"] {
            assert_eq!(
                env.0.get(name).map(String::as_str),
                Some("localhost,127.0.0.1,172.16.0.0/24")
            );
        }
        let shown = format!("{env:?} {proxy:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
    }
}
