//! Configuration errors that point at the line (and key) at fault.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a configuration could not be loaded. Every variant names its source
/// (the file, or `<config>` for text given directly) and, where there is
/// one, the line, column and key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source} (check the --config path and its permissions)", path.display())]
    Read {
        /// The path given with `--config`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value is wrong, at a known place.
    #[error("{0}")]
    At(Located),
    /// A problem that concerns the configuration as a whole.
    #[error("{origin}: {message}")]
    Whole {
        /// The file name, or `<config>`.
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// An error at a line and column of the configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file name, or `<config>`.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The key on that line, when the line is a `key = value` line.
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The text of the line, for context.
    pub source_line: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if let Some(key) = &self.key {
            if !self.message.contains(&format!("`{key}`")) {
                write!(f, "key `{key}`: ")?;
            }
        }
        write!(f, "{}", self.message)?;
        let gutter = self.line.to_string();
        write!(
            f,
            "\n  {gutter} | {}\n  {} | {}^",
            self.source_line,
            " ".repeat(gutter.len()),
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

impl ConfigError {
    /// An error located at byte range `span` of `text`.
    pub(crate) fn at(
        origin: &str,
        text: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::At(locate(origin, text, span.start, message.into()))
    }

    /// An error about the whole configuration.
    pub(crate) fn whole(origin: &str, message: impl Into<String>) -> Self {
        ConfigError::Whole {
            origin: origin.to_owned(),
            message: message.into(),
        }
    }

    /// Converts a TOML parse or deserialize error.
    pub(crate) fn from_toml(origin: &str, text: &str, err: &toml::de::Error) -> Self {
        let message = err.message().trim().to_owned();
        match err.span() {
            Some(span) => ConfigError::At(locate(origin, text, span.start, message)),
            None => ConfigError::whole(origin, message),
        }
    }

    /// The 1-based line of the error, when it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::At(l) => Some(l.line),
            _ => None,
        }
    }
}

fn locate(origin: &str, text: &str, offset: usize, message: String) -> Located {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(1, |s| s.chars().count() + 1);
    let source_line = text[line_start..]
        .split('\n')
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_owned();
    Located {
        origin: origin.to_owned(),
        line,
        column,
        key: key_of(&source_line),
        message,
        source_line,
    }
}

/// The key of a `key = value` line (bare or quoted), if the line is one.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let key = key.trim_matches('"');
    if key.is_empty()
        || key.starts_with('[')
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return None;
    }
    Some(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_column_and_key() {
        let text = "a = 1\n[shutdown]\ndrain_grace = \"3x\"\n";
        let offset = text.find("\"3x\"").unwrap();
        let l = locate("g.toml", text, offset, "bad".into());
        assert_eq!((l.line, l.column), (3, 15));
        assert_eq!(l.key.as_deref(), Some("drain_grace"));
        let shown = ConfigError::At(l).to_string();
        assert!(
            shown.starts_with("g.toml:3:15: key `drain_grace`: bad"),
            "{shown}"
        );
        assert!(shown.contains("3 | drain_grace = \"3x\""), "{shown}");
    }

    #[test]
    fn table_headers_have_no_key() {
        assert_eq!(key_of("[shutdown]"), None);
        assert_eq!(key_of("  \"name\" = 'x'"), Some("name".into()));
    }
}
