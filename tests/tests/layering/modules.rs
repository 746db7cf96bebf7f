//! The crates of a package and their module trees (from `mod` declarations,
//! `#[path]` included), and the module each `use` or path names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::lexer::{tokens, Token};

/// A module path inside a crate (`["handoff", "builder"]`; empty for the root).
pub(crate) type ModPath = Vec<String>;

/// One crate: every file module reached from its root.
#[derive(Debug)]
pub(crate) struct Crate {
    pub(crate) files: BTreeMap<ModPath, SourceFile>,
}

/// A file module: where it is and what it names.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    tokens: Vec<Token>,
}

/// A path found in a file, absolute in its crate (`crate::` resolved).
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    pub(crate) path: ModPath,
    pub(crate) line: usize,
    /// `pub use` (any visibility): an item re-exported under `alias`.
    pub(crate) reexport: Option<String>,
}

/// Every `.rs` file of the package at `dir`, nested packages and `target/`
/// left out.
pub(crate) fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                let nested = path.join("Cargo.toml").exists();
                if !nested && name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The crate roots of the package at `dir`: Cargo's default places and
/// every `path = "….rs"` of its `Cargo.toml`.
pub(crate) fn crate_roots(dir: &Path) -> Vec<PathBuf> {
    let mut roots = BTreeSet::new();
    for file in rust_files(dir) {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let root = matches!(
            parts[..],
            ["src", "lib.rs" | "main.rs"]
                | ["src", "bin", _]
                | ["src", "bin", _, "main.rs"]
                | ["tests" | "benches" | "examples", _]
                | ["tests" | "benches" | "examples", _, "main.rs"]
        );
        if root {
            roots.insert(file);
        }
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    for line in manifest.lines() {
        if let Some(value) = line.trim().strip_prefix("path = \"") {
            let value = value.trim_end_matches('"');
            if value.ends_with(".rs") {
                roots.insert(dir.join(value));
            }
        }
    }
    roots.into_iter().filter(|r| r.exists()).collect()
}

/// The crate rooted at `root`, every `mod name;` followed.
pub(crate) fn load_crate(root: &Path) -> std::io::Result<Crate> {
    let mut files = BTreeMap::new();
    let mut pending = vec![(ModPath::new(), root.to_path_buf(), true)];
    while let Some((module, path, is_root)) = pending.pop() {
        let tokens = tokens(&std::fs::read_to_string(&path)?);
        let children = declared_children(&path, &tokens, is_root);
        for (names, child) in children {
            let child_module = module.iter().chain(&names).cloned().collect();
            pending.push((child_module, child, false));
        }
        files.insert(module, SourceFile { path, tokens });
    }
    Ok(Crate { files })
}

/// The `mod name;` declarations of a file: the module path below the
/// file's (inline modules on the way included) and the file each names.
fn declared_children(path: &Path, tokens: &[Token], is_root: bool) -> Vec<(ModPath, PathBuf)> {
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let own_dir = if is_root || path.file_name().is_some_and(|n| n == "mod.rs") {
        dir.clone()
    } else {
        dir.join(path.file_stem().unwrap_or_default())
    };
    let mut children = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "mod" => {
                let (Some(name), Some(after)) = (tokens.get(i + 1), tokens.get(i + 2)) else {
                    continue;
                };
                let nested: PathBuf = inline.iter().map(|(n, _)| n.as_str()).collect();
                if after.text == "{" {
                    inline.push((name.text.clone(), depth + 1));
                } else if after.text == ";" {
                    let file = match path_attribute(&tokens[..i]) {
                        Some(p) if inline.is_empty() => dir.join(p),
                        Some(p) => own_dir.join(&nested).join(p),
                        None => {
                            let base = own_dir.join(&nested);
                            let flat = base.join(format!("{}.rs", name.text));
                            if flat.exists() {
                                flat
                            } else {
                                base.join(&name.text).join("mod.rs")
                            }
                        }
                    };
                    if file.exists() {
                        let mut module: ModPath = inline.iter().map(|(n, _)| n.clone()).collect();
                        module.push(name.text.clone());
                        children.push((module, file));
                    }
                }
            }
            _ => {}
        }
    }
    children
}

/// The value of a `#[path = "..."]` right before `mod` (visibility allowed).
fn path_attribute(before: &[Token]) -> Option<String> {
    let mut end = before.len();
    while end > 0 && matches!(before[end - 1].text.as_str(), "pub" | "(" | ")" | "crate") {
        end -= 1;
    }
    let window = before.get(end.checked_sub(6)?..end)?;
    let texts: Vec<&str> = window.iter().map(|t| t.text.as_str()).collect();
    match texts[..] {
        ["#", "[", "path", "=", value, "]"] => value.strip_prefix('"').map(str::to_owned),
        _ => None,
    }
}

impl Crate {
    /// The file module that `path` (absolute in the crate) lands in,
    /// re-exports followed (`references` holds each module's references,
    /// its `pub use` lines among them).
    pub(crate) fn target(
        &self,
        references: &BTreeMap<ModPath, Vec<Reference>>,
        path: &[String],
    ) -> ModPath {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let module = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|m| self.files.contains_key(m))
                .unwrap_or_default();
            let Some(next) = path.get(module.len()) else {
                return module;
            };
            let reexported = references
                .get(&module)
                .into_iter()
                .flatten()
                .find(|r| r.reexport.as_deref() == Some(next.as_str()))
                .cloned();
            match reexported {
                Some(r) => {
                    let mut followed = r.path;
                    followed.extend(path[module.len() + 1..].iter().cloned());
                    path = followed;
                }
                None => return module,
            }
        }
        ModPath::new()
    }
}

impl SourceFile {
    /// Every `use` leaf and every `crate::`/`super::`/`self::` path of the
    /// file, made absolute; paths into other crates are left out.
    pub(crate) fn references(&self, krate: &Crate, module: &ModPath) -> Vec<Reference> {
        let tokens = &self.tokens;
        let mut found = Vec::new();
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        let mut i = 0;
        while i < tokens.len() {
            let text = tokens[i].text.as_str();
            let mut here = module.clone();
            here.extend(inline.iter().map(|(n, _)| n.clone()));
            match text {
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if inline.last().is_some_and(|(_, d)| *d > depth) {
                        inline.pop();
                    }
                }
                "mod" if tokens.get(i + 2).is_some_and(|t| t.text == "{") => {
                    inline.push((tokens[i + 1].text.clone(), depth + 1));
                }
                "use" => {
                    let public = i > 0 && is_visibility_end(tokens, i);
                    let mut leaves = Vec::new();
                    i = use_tree(tokens, i + 1, Vec::new(), &mut leaves);
                    for (mut path, alias, line) in leaves {
                        if path.len() > 1 && path.last().is_some_and(|l| l == "self") {
                            path.pop(); // `use a::b::{self}` names `a::b`
                        }
                        if let Some(path) = self.absolute(krate, &here, &path) {
                            let reexport = public.then_some(alias);
                            found.push(Reference {
                                path,
                                line,
                                reexport,
                            });
                        }
                    }
                    continue;
                }
                "crate" | "super" | "self"
                    if tokens.get(i + 1).is_some_and(|t| t.text == "::")
                        && !(i > 0 && tokens[i - 1].text == "$") =>
                {
                    let line = tokens[i].line;
                    let mut path = vec![text.to_owned()];
                    let mut j = i + 1;
                    while tokens.get(j).is_some_and(|t| t.text == "::")
                        && tokens.get(j + 1).is_some_and(|t| is_word(&t.text))
                    {
                        path.push(tokens[j + 1].text.clone());
                        j += 2;
                    }
                    if let Some(path) = self.absolute(krate, &here, &path) {
                        found.push(Reference {
                            path,
                            line,
                            reexport: None,
                        });
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        found
    }

    /// `path` as written in module `here`, absolute; `None` for a path into
    /// another crate.
    fn absolute(&self, krate: &Crate, here: &ModPath, path: &[String]) -> Option<ModPath> {
        let (first, rest) = path.split_first()?;
        let mut base = match first.as_str() {
            "crate" => ModPath::new(),
            "self" => here.clone(),
            "super" => here[..here.len().checked_sub(1)?].to_vec(),
            name => {
                // A 2018 relative path: a child module of `here` (inline
                // ones stay in this file), or another crate.
                let mut child = here.clone();
                child.push(name.to_owned());
                if !krate.files.contains_key(&child) {
                    return None;
                }
                return Some(child.into_iter().chain(rest.iter().cloned()).collect());
            }
        };
        let mut rest = rest;
        while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
            base.pop();
            rest = tail;
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

fn is_word(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// True when the `use` at `i` is preceded by a visibility (`pub`,
/// `pub(crate)`, `pub(super)`, `pub(in path)`).
fn is_visibility_end(tokens: &[Token], i: usize) -> bool {
    if tokens[i - 1].text == "pub" {
        return true;
    }
    if tokens[i - 1].text != ")" {
        return false;
    }
    let open = tokens[..i - 1].iter().rposition(|t| t.text == "(");
    open.is_some_and(|o| o > 0 && tokens[o - 1].text == "pub")
}

/// Parses one use tree from `i` with `prefix`, adding each leaf (path,
/// name it is known by, line) to `leaves`; returns the index past the tree
/// (past the `;` at the top level).
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<(Vec<String>, String, usize)>,
) -> usize {
    let top = prefix.is_empty();
    let mut grouped = false;
    if tokens.get(i).is_some_and(|t| t.text == "::") {
        i += 1; // a leading `::`: another crate
        prefix.push("::".to_owned());
    }
    while let Some(token) = tokens.get(i) {
        match token.text.as_str() {
            "{" => {
                i += 1;
                while tokens.get(i).is_some_and(|t| t.text != "}") {
                    i = use_tree(tokens, i, prefix.clone(), leaves);
                    if tokens.get(i).is_some_and(|t| t.text == ",") {
                        i += 1;
                    }
                }
                i += 1;
                grouped = true;
            }
            "::" => i += 1,
            "*" => {
                leaves.push((prefix.clone(), "*".to_owned(), token.line));
                i += 1;
                grouped = true;
            }
            "as" => {
                let alias = tokens
                    .get(i + 1)
                    .map(|t| t.text.clone())
                    .unwrap_or_default();
                leaves.push((prefix.clone(), alias, token.line));
                i += 2;
                grouped = true;
            }
            ";" | "," | "}" => {
                if let Some(last) = prefix.last().filter(|l| !grouped && *l != "::") {
                    leaves.push((prefix.clone(), last.clone(), token.line));
                }
                return if top && token.text == ";" { i + 1 } else { i };
            }
            word => {
                prefix.push(word.to_owned());
                i += 1;
            }
        }
    }
    i
}
