//! SMTP command lines (RFC 5321 §4.1) parsed into [`Command`]s.

/// Longest command line, including CRLF (RFC 5321 §4.5.3.1.4 says 512; we
/// allow the 1000 of a text line, as many servers do).
pub(crate) const MAX_COMMAND_LINE: usize = 1000;
/// Longest path between `<` and `>` (RFC 5321 §4.5.3.1.3).
const MAX_PATH: usize = 256;

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Ehlo(String),
    Helo(String),
    Mail { from: String, size: Option<u64> },
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    Starttls,
}

/// Why a line is not a valid command; each maps to one reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Not a command we know: `500 5.5.1`.
    Unknown,
    /// Known command, bad arguments: `501 5.5.4` with this text.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not support: `555 5.5.4`.
    Parameter(String),
}

pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(ParseError::Unknown);
    };
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r.trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("no arguments allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest;
            if domain.is_empty() || domain.contains(' ') || domain.chars().any(|c| c.is_control()) {
                return Err(ParseError::Syntax(
                    "give your domain name or address literal",
                ));
            }
            let domain = domain.to_owned();
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain)
            } else {
                Command::Helo(domain)
            })
        }
        "MAIL" => {
            let args = strip_prefix_ci(rest, "FROM:")
                .ok_or(ParseError::Syntax("use MAIL FROM:<address>"))?;
            let (from, params) = path(args, true)?;
            let mut size = None;
            for p in params.split(' ').filter(|p| !p.is_empty()) {
                let (key, value) = p.split_once('=').unwrap_or((p, ""));
                match key.to_ascii_uppercase().as_str() {
                    "SIZE" => {
                        size =
                            Some(value.parse::<u64>().map_err(|_| {
                                ParseError::Syntax("SIZE needs a number of octets")
                            })?);
                    }
                    "BODY" => match value.to_ascii_uppercase().as_str() {
                        "7BIT" | "8BITMIME" => {}
                        _ => return Err(ParseError::Parameter(format!("BODY={value}"))),
                    },
                    _ => return Err(ParseError::Parameter(p.to_owned())),
                }
            }
            Ok(Command::Mail { from, size })
        }
        "RCPT" => {
            let args =
                strip_prefix_ci(rest, "TO:").ok_or(ParseError::Syntax("use RCPT TO:<address>"))?;
            let (to, params) = path(args, false)?;
            if let Some(p) = params.split(' ').find(|p| !p.is_empty()) {
                return Err(ParseError::Parameter(p.to_owned()));
            }
            Ok(Command::Rcpt(to))
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::Starttls),
        // NOOP and HELP may carry a string that is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        _ => Err(ParseError::Unknown),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s[prefix.len()..].trim_start())
}

/// `<path> params`: the path (without brackets) and the rest.
fn path(s: &str, null_ok: bool) -> Result<(String, &str), ParseError> {
    let inner = s
        .strip_prefix('<')
        .ok_or(ParseError::Syntax("the address must be in angle brackets"))?;
    let end = inner
        .find('>')
        .ok_or(ParseError::Syntax("the address must be in angle brackets"))?;
    let (addr, rest) = (&inner[..end], &inner[end + 1..]);
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::Syntax("a space must follow the address"));
    }
    if addr.len() > MAX_PATH {
        return Err(ParseError::Syntax("the address is longer than 256 octets"));
    }
    if addr.chars().any(|c| c.is_control() || c == ' ' || c == '<') {
        return Err(ParseError::Syntax(
            "the address holds a space or control character",
        ));
    }
    if addr.is_empty() && !null_ok {
        return Err(ParseError::Syntax("the recipient address is empty"));
    }
    Ok((addr.to_owned(), rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands() {
        assert_eq!(
            parse(b"ehlo client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(
            parse(b"HELO [127.0.0.1]").unwrap(),
            Command::Helo("[127.0.0.1]".into())
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME").unwrap(),
            Command::Mail {
                from: "a@b".into(),
                size: Some(100)
            }
        );
        assert_eq!(
            parse(b"mail from: <>").unwrap(),
            Command::Mail {
                from: String::new(),
                size: None
            }
        );
        assert_eq!(
            parse(b"RCPT TO:<x@y>").unwrap(),
            Command::Rcpt("x@y".into())
        );
        assert_eq!(parse(b"DATA").unwrap(), Command::Data);
        assert_eq!(parse(b"noop whatever").unwrap(), Command::Noop);
        assert_eq!(parse(b"VRFY root").unwrap(), Command::Vrfy);
        assert_eq!(parse(b"QUIT").unwrap(), Command::Quit);
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(parse(b"FOO").unwrap_err(), ParseError::Unknown);
        assert_eq!(parse(b"").unwrap_err(), ParseError::Unknown);
        assert_eq!(parse(b"\xff\xfe").unwrap_err(), ParseError::Unknown);
        assert!(matches!(parse(b"EHLO").unwrap_err(), ParseError::Syntax(_)));
        assert!(matches!(
            parse(b"MAIL TO:<a>").unwrap_err(),
            ParseError::Syntax(_)
        ));
        assert!(matches!(
            parse(b"MAIL FROM:a@b").unwrap_err(),
            ParseError::Syntax(_)
        ));
        assert!(matches!(
            parse(b"MAIL FROM:<a@b> SIZE=x").unwrap_err(),
            ParseError::Syntax(_)
        ));
        assert!(matches!(
            parse(b"RCPT TO:<>").unwrap_err(),
            ParseError::Syntax(_)
        ));
        assert!(matches!(
            parse(b"DATA now").unwrap_err(),
            ParseError::Syntax(_)
        ));
        assert_eq!(
            parse(b"MAIL FROM:<a@b> AUTH=<>").unwrap_err(),
            ParseError::Parameter("AUTH=<>".into())
        );
        assert_eq!(
            parse(b"RCPT TO:<a@b> NOTIFY=NEVER").unwrap_err(),
            ParseError::Parameter("NOTIFY=NEVER".into())
        );
    }
}
