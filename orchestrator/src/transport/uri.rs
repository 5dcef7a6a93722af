//! Agent addresses as strings, for configuration and `agentctl`.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Connector, HybridVsockConnector, TransportError, UnixConnector, VsockConnector};

/// A malformed agent address.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// Not one of the known forms.
    #[error("bad address {0:?}: expected unix:/path, vsock:CID:PORT or hvsock:/path/to/uds:PORT")]
    Malformed(String),
    /// Well-formed but refused (a reserved CID).
    #[error(transparent)]
    Refused(#[from] TransportError),
}

fn split_port(rest: &str, uri: &str) -> Result<(String, u32), UriError> {
    let (head, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| UriError::Malformed(uri.into()))?;
    let port = port.parse().map_err(|_| UriError::Malformed(uri.into()))?;
    if head.is_empty() {
        return Err(UriError::Malformed(uri.into()));
    }
    Ok((head.to_string(), port))
}

/// Parses `unix:/path`, `vsock:CID:PORT` or `hvsock:/path/to/uds:PORT` into a connector.
pub fn connector_from_uri(uri: &str) -> Result<Arc<dyn Connector>, UriError> {
    match uri.split_once(':') {
        Some(("unix", path)) if !path.is_empty() => Ok(Arc::new(UnixConnector::new(path))),
        Some(("vsock", rest)) => {
            let (cid, port) = split_port(rest, uri)?;
            let cid = cid.parse().map_err(|_| UriError::Malformed(uri.into()))?;
            Ok(Arc::new(VsockConnector::new(cid, port)?))
        }
        Some(("hvsock", rest)) => {
            let (path, port) = split_port(rest, uri)?;
            Ok(Arc::new(HybridVsockConnector::new(path, port)))
        }
        _ => Err(UriError::Malformed(uri.into())),
    }
}

/// The socket path a hello listener binds for `unix:/path` or `hvsock:/uds:PORT` (`/uds_PORT`).
pub fn hello_listener_path(uri: &str) -> Result<PathBuf, UriError> {
    match uri.split_once(':') {
        Some(("unix", path)) if !path.is_empty() => Ok(path.into()),
        Some(("hvsock", rest)) => {
            let (path, port) = split_port(rest, uri)?;
            Ok(HybridVsockConnector::new(path, 0).host_listener_path(port))
        }
        _ => Err(UriError::Malformed(uri.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_refuses_the_rest() {
        for ok in [
            "unix:/tmp/a.sock",
            "vsock:3:1024",
            "hvsock:/run/v.sock:1024",
        ] {
            assert!(connector_from_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "tcp:1.2.3.4:80",
            "unix:",
            "vsock:3",
            "hvsock::1024",
            "vsock:x:1",
        ] {
            assert!(
                matches!(connector_from_uri(bad), Err(UriError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            connector_from_uri("vsock:2:1024"),
            Err(UriError::Refused(_))
        ));
        assert_eq!(
            hello_listener_path("hvsock:/run/v.sock:1025").expect("path"),
            PathBuf::from("/run/v.sock_1025")
        );
    }
}
