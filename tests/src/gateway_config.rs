//! The gateway's TOML config as the tests write it: JSON logs, the
//! `gw.test` host name and, unless told otherwise, SMTP, IMAP and HTTP
//! listeners on 127.0.0.1 port 0.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One `[[listener]]` table.
#[derive(Debug, Clone)]
struct Listener {
    name: String,
    protocol: String,
    address: String,
    extra: String,
}

/// Builds a `lifecycle-gateway` config file.
///
/// ```
/// use lifecycle_tests::GatewayConfig;
///
/// let text = GatewayConfig::new("/var/spool/gw")
///     .head("allow_root = true")
///     .drain_grace("3s")
///     .text();
/// assert!(text.starts_with("allow_root = true\nspool_dir = \"/var/spool/gw\"\n"));
/// assert!(text.contains("[shutdown]\ndrain_grace = \"3s\"\n"));
/// assert_eq!(text.matches("[[listener]]").count(), 3);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct GatewayConfig {
    head: String,
    spool: PathBuf,
    shutdown: String,
    smtp: String,
    limits: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
    listeners: Vec<Listener>,
}

impl GatewayConfig {
    /// A config spooling to `spool`, with SMTP, IMAP and HTTP listeners on
    /// `127.0.0.1:0` and the gateway's own shutdown graces and limits.
    pub fn new(spool: impl Into<PathBuf>) -> GatewayConfig {
        GatewayConfig {
            head: String::new(),
            spool: spool.into(),
            shutdown: String::new(),
            smtp: String::new(),
            limits: None,
            tls: None,
            listeners: Vec::new(),
        }
        .listener("smtp", "smtp", "127.0.0.1:0", "")
        .listener("imap", "imap", "127.0.0.1:0", "")
        .listener("http", "http", "127.0.0.1:0", "")
    }

    /// Top-level lines written first, e.g. `allow_root = true` or
    /// `user = "nobody"` (may be called again to add more).
    pub fn head(mut self, lines: &str) -> Self {
        self.head.push_str(lines);
        self.head.push('\n');
        self
    }

    /// `[shutdown] lame_duck`, as the config writes it (default: unset).
    pub fn lame_duck(self, lame_duck: &str) -> Self {
        self.shutdown_key("lame_duck", lame_duck)
    }

    /// `[shutdown] drain_grace`, as the config writes it (default: unset).
    pub fn drain_grace(self, grace: &str) -> Self {
        self.shutdown_key("drain_grace", grace)
    }

    /// `[shutdown] abort_grace`, as the config writes it (default: unset).
    pub fn abort_grace(self, grace: &str) -> Self {
        self.shutdown_key("abort_grace", grace)
    }

    fn shutdown_key(mut self, key: &str, value: &str) -> Self {
        self.shutdown.push_str(&format!("{key} = \"{value}\"\n"));
        self
    }

    /// Extra lines for the `[smtp]` table, e.g. `max_message_size = 1000`.
    pub fn smtp(mut self, lines: &str) -> Self {
        self.smtp = lines.to_owned();
        self
    }

    /// Lines for the `[limits]` table (default: no table, the gateway's
    /// own limits).
    pub fn limits(mut self, lines: &str) -> Self {
        self.limits = Some(lines.to_owned());
        self
    }

    /// A `[tls]` table with this certificate chain and key.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// No listener at all (add them with [`listener`](Self::listener)).
    pub fn no_listeners(mut self) -> Self {
        self.listeners.clear();
        self
    }

    /// Adds a listener, or replaces the one named `name`: its protocol,
    /// address and `extra` lines for its table (e.g. `backlog = 4096`).
    pub fn listener(mut self, name: &str, protocol: &str, address: &str, extra: &str) -> Self {
        let listener = Listener {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            address: address.to_owned(),
            extra: extra.to_owned(),
        };
        match self.listeners.iter_mut().find(|l| l.name == name) {
            Some(old) => *old = listener,
            None => self.listeners.push(listener),
        }
        self
    }

    /// The config's text.
    pub fn text(&self) -> String {
        let mut text = format!("{}spool_dir = \"{}\"\n", self.head, self.spool.display());
        if !self.shutdown.is_empty() {
            text.push_str(&format!("[shutdown]\n{}", self.shutdown));
        }
        text.push_str("[log]\nformat = \"json\"\nlevel = \"info\"\n");
        text.push_str(&format!("[smtp]\nhostname = \"gw.test\"\n{}\n", self.smtp));
        if let Some(limits) = &self.limits {
            text.push_str(&format!("[limits]\n{limits}\n"));
        }
        if let Some((cert, key)) = &self.tls {
            text.push_str(&format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        for l in &self.listeners {
            text.push_str(&format!(
                "[[listener]]\nname = \"{}\"\nprotocol = \"{}\"\naddress = \"{}\"\n{}\n",
                l.name, l.protocol, l.address, l.extra
            ));
        }
        text
    }

    /// Writes the config to `dir/gateway.toml`, readable by everyone (the
    /// gateway may run as another user); returns its path.
    pub fn write(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, self.text())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }
}
