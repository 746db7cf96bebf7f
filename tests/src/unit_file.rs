//! A small reader for systemd unit files (`[Section]` and `Key=Value`
//! lines), enough to check deployment files against each other.

use std::path::{Path, PathBuf};

/// Why a unit file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UnitFileError {
    /// The file could not be read.
    #[error("cannot read unit file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is neither a section header, a comment nor `Key=Value`.
    #[error("line {line}: {text:?} is not [Section], a comment or Key=Value; fix the unit file")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// A `Key=Value` line before the first section header.
    #[error("line {line}: {text:?} comes before any [Section] header; move it into one")]
    NoSection {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
}

/// The settings of a unit file, in file order.
///
/// ```
/// use lifecycle_tests::UnitFile;
///
/// let unit = UnitFile::parse("[Service]\n# comment\nType=notify\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged\n")?;
/// assert_eq!(unit.value("Service", "Type"), Some("notify"));
/// assert_eq!(unit.values("Service", "SystemCallFilter"), ["@system-service", "~@privileged"]);
/// assert_eq!(unit.value("Unit", "Description"), None);
/// # Ok::<(), lifecycle_tests::UnitFileError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct UnitFile {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    section: String,
    key: String,
    value: String,
}

impl UnitFile {
    /// Reads and parses the unit file at `path`.
    pub fn read(path: &Path) -> Result<Self, UnitFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| UnitFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses unit-file text. Lines ending in `\` continue on the next line,
    /// as systemd reads them.
    pub fn parse(text: &str) -> Result<Self, UnitFileError> {
        let mut entries = Vec::new();
        let mut section: Option<String> = None;
        let mut pending = String::new();
        let mut pending_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = raw.trim();
            if pending.is_empty() {
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                    continue;
                }
                pending_line = line_no;
            }
            if let Some(head) = trimmed.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(trimmed);
            let line = std::mem::take(&mut pending);
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_owned());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(UnitFileError::Syntax {
                    line: pending_line,
                    text: line,
                });
            };
            let Some(section) = &section else {
                return Err(UnitFileError::NoSection {
                    line: pending_line,
                    text: line,
                });
            };
            entries.push(Entry {
                section: section.clone(),
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// Every value assigned to `key` in `section`, in file order.
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.section == section && e.key == key)
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The last value assigned to `key` in `section` (the one systemd uses
    /// for single-valued settings).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_join() {
        let unit = UnitFile::parse("[Service]\nExecStart=/bin/x \\\n  --flag\n").unwrap();
        assert_eq!(unit.value("Service", "ExecStart"), Some("/bin/x  --flag"));
    }

    #[test]
    fn a_line_without_equals_names_its_line() {
        let err = UnitFile::parse("[Unit]\nDescription=x\nnonsense\n").unwrap_err();
        assert!(
            matches!(err, UnitFileError::Syntax { line: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_setting_before_any_section_is_an_error() {
        let err = UnitFile::parse("Type=notify\n").unwrap_err();
        assert!(
            matches!(err, UnitFileError::NoSection { line: 1, .. }),
            "{err}"
        );
    }
}
