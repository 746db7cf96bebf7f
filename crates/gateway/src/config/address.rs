//! Listener addresses as written in the config: `host:port`, `[v6]:port`,
//! `unix:/path`.

use std::net::SocketAddr;
use std::path::PathBuf;

use lifecycle_handoff::ListenAddress;

/// Longest Unix socket path the kernel accepts (`sun_path` holds 108 bytes
/// including the terminating NUL).
const MAX_UNIX_PATH: usize = 107;

/// Parses a listener address. The error says what is wrong and shows the
/// accepted forms.
pub(crate) fn parse_address(text: &str) -> Result<ListenAddress, String> {
    const FORMS: &str = "use `127.0.0.1:2525`, `[::1]:2525` or `unix:/run/gateway/smtp.sock`";
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!(
                "address `{text}` has an empty socket path; {FORMS}"
            ));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(format!(
                "unix socket path `{path}` is {} bytes, the kernel allows at most {MAX_UNIX_PATH}; use a shorter path",
                path.len()
            ));
        }
        if path.contains('\0') {
            return Err(format!("unix socket path `{path}` contains a NUL byte"));
        }
        return Ok(ListenAddress::Unix(PathBuf::from(path)));
    }
    if text.is_empty() {
        return Err(format!("address is empty; {FORMS}"));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ListenAddress::Tcp(addr));
    }
    // Explain the most likely mistake.
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("address `{text}` has no port; {FORMS}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address `{text}`: port `{port}` is not a number from 0 to 65535; {FORMS}"
        ));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "address `{text}`: an IPv6 address needs brackets, as in `[{host}]:{port}`"
        ));
    }
    Err(format!(
        "address `{text}`: host `{host}` is not an IP address (host names are not resolved); {FORMS}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_forms() {
        assert_eq!(
            parse_address("127.0.0.1:2525").unwrap(),
            ListenAddress::Tcp("127.0.0.1:2525".parse().unwrap())
        );
        assert_eq!(
            parse_address("[::1]:0").unwrap(),
            ListenAddress::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            parse_address("unix:/run/g/smtp.sock").unwrap(),
            ListenAddress::Unix("/run/g/smtp.sock".into())
        );
    }

    #[test]
    fn explains_each_mistake() {
        let cases = [
            ("", "empty"),
            ("unix:", "empty socket path"),
            ("127.0.0.1", "no port"),
            ("127.0.0.1:99999", "not a number"),
            ("::1:25", "needs brackets"),
            ("localhost:25", "not an IP address"),
        ];
        for (input, expect) in cases {
            let err = parse_address(input).unwrap_err();
            assert!(err.contains(expect), "{input:?}: {err}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(parse_address(&long).unwrap_err().contains("at most 107"));
    }
}
