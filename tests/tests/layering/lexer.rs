//! A small Rust tokenizer: just enough to find module declarations, `use`
//! trees and paths, with comments, strings and character literals skipped
//! (so a `crate::x` in a doc comment or a `{` in a format string is not
//! taken for code).

/// One token and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) text: String,
    pub(crate) line: usize,
}

/// The tokens of `source`: identifiers and keywords (a raw `r#ident`
/// without its `r#`), `::`, a plain string literal as one token (`"` and
/// its body, for `#[path = "..."]`), and every other punctuation character
/// on its own. Numbers, lifetimes, comments, character, byte and raw
/// string literals are dropped.
pub(crate) fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&chars, i, &mut line);
        } else if c == '"' {
            let (start, start_line) = (i + 1, line);
            i = skip_string(&chars, start, &mut line);
            let body = &chars[start..i.saturating_sub(1).max(start)];
            out.push(Token {
                text: format!("\"{}", body.iter().collect::<String>()),
                line: start_line,
            });
        } else if (c == 'r' || c == 'b') && starts_raw_string(&chars, i) {
            i = skip_raw_string(&chars, i, &mut line);
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 2, &mut line);
        } else if c == 'b' && next == Some('\'') {
            i = skip_char(&chars, i + 1);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&chars, i);
        } else if c == 'r' && next == Some('#') && chars.get(i + 2).is_some_and(|c| is_ident(*c)) {
            let start = i + 2;
            i = end_of_ident(&chars, start);
            out.push(token(&chars[start..i], line));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            i = end_of_ident(&chars, i);
            out.push(token(&chars[start..i], line));
        } else if c.is_ascii_digit() {
            i = end_of_ident(&chars, i);
        } else if c == ':' && next == Some(':') {
            out.push(Token {
                text: "::".to_owned(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

fn token(chars: &[char], line: usize) -> Token {
    Token {
        text: chars.iter().collect(),
        line,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn end_of_ident(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && is_ident(chars[i]) {
        i += 1;
    }
    i
}

/// Past a (nestable) block comment starting at `i`.
fn skip_block_comment(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            (c, _) => {
                if c == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    i
}

/// Past the closing quote of a string whose body starts at `i`.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            c => {
                if c == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    i
}

/// `r"`, `r#"`, `br"`, `br#"` at `i` (and not an identifier such as `r`).
fn starts_raw_string(chars: &[char], i: usize) -> bool {
    let mut j = i;
    if chars[j] == 'b' {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

fn skip_raw_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while chars[i] != '#' && chars[i] != '"' {
        i += 1;
    }
    let mut hashes = 0;
    while chars[i] == '#' {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < chars.len() {
        if chars[i] == '\n' {
            *line += 1;
        }
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Past a character literal whose opening quote is at `i`.
fn skip_char(chars: &[char], i: usize) -> usize {
    let mut j = i + 1;
    if chars.get(j) == Some(&'\\') {
        j += 2;
    } else {
        j += 1;
    }
    while j < chars.len() && chars[j] != '\'' {
        j += 1;
    }
    j + 1
}

/// A character literal (`'a'`, `'\n'`, `'{'`) or a lifetime (`'a`).
fn skip_char_or_lifetime(chars: &[char], i: usize) -> usize {
    let is_char = matches!(
        (chars.get(i + 1), chars.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    );
    if is_char {
        skip_char(chars, i)
    } else {
        end_of_ident(chars, i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::tokens;

    fn texts(source: &str) -> Vec<String> {
        tokens(source).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn comments_strings_and_chars_are_skipped() {
        let source = "// crate::a\n/* crate::b /* nested */ */ let s = \"crate::c {\";\n\
                      let raw = r#\"crate::d\"#; let brace = '{'; fn f<'a>() { crate::e::X }";
        let texts = texts(source);
        assert!(!texts
            .iter()
            .any(|t| t == "a" || t == "b" || t == "c" || t == "d"));
        assert_eq!(texts.iter().filter(|t| *t == "{").count(), 1, "{texts:?}");
        assert!(
            texts.windows(3).any(|w| w == ["crate", "::", "e"]),
            "{texts:?}"
        );
    }

    #[test]
    fn lines_are_counted_through_skipped_text() {
        let found = tokens("/* one\ntwo */ \"three\nfour\"\nmod x;");
        assert_eq!(found[0].text, "\"three\nfour");
        assert_eq!(found[0].line, 2);
        assert_eq!(found[1].text, "mod");
        assert_eq!(found[1].line, 4);
    }
}
