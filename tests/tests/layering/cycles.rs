//! Circles of `use` between sibling modules of a crate: every reference
//! from one file to another becomes an edge between the two children of
//! their nearest common module (a module and its own descendants aside),
//! and each strongly connected group of two or more siblings is a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::modules::{crate_roots, load_crate, rust_files, ModPath, Reference};

/// What the check found in one package.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Crate roots checked.
    pub(crate) crates: usize,
    /// Distinct files checked.
    pub(crate) files: usize,
    /// Distinct edges between sibling modules.
    pub(crate) edges: usize,
    /// `.rs` files of the package that no crate root reaches (not checked).
    pub(crate) unreached: Vec<PathBuf>,
    /// The circles.
    pub(crate) circles: Vec<Circle>,
}

/// Sibling modules that import each other, directly or round a loop.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Circle {
    /// The module whose children they are (`crate` for the root).
    pub(crate) parent: String,
    /// The siblings.
    pub(crate) members: Vec<String>,
    /// Each edge between them with one place that makes it.
    pub(crate) edges: Vec<String>,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "circle among the children of {}: {}",
            self.parent,
            self.members.join(", ")
        )?;
        for edge in &self.edges {
            writeln!(f, "    {edge}")?;
        }
        Ok(())
    }
}

/// An edge between siblings under `parent`, with where it comes from.
type Edges = BTreeMap<(ModPath, String, String), String>;

/// Checks every crate of the package at `dir`; paths in the report are
/// relative to `base`.
pub(crate) fn check_package(dir: &Path, base: &Path) -> std::io::Result<Report> {
    let mut report = Report::default();
    let mut reached = BTreeSet::new();
    let mut circles = BTreeSet::new();
    for root in crate_roots(dir) {
        let krate = load_crate(&root)?;
        report.crates += 1;
        let references: BTreeMap<ModPath, Vec<Reference>> = krate
            .files
            .iter()
            .map(|(module, file)| (module.clone(), file.references(&krate, module)))
            .collect();
        let mut edges = Edges::new();
        for (module, file) in &krate.files {
            reached.insert(file.path.clone());
            for reference in &references[module] {
                let target = krate.target(&references, &reference.path);
                let common = module
                    .iter()
                    .zip(&target)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == module.len() || common == target.len() {
                    continue; // the same module, an ancestor or a descendant
                }
                let site = format!(
                    "{} -> {}: {}:{} crate::{}",
                    module[common],
                    target[common],
                    relative(&file.path, base).display(),
                    reference.line,
                    reference.path.join("::")
                );
                let key = (
                    module[..common].to_vec(),
                    module[common].clone(),
                    target[common].clone(),
                );
                edges.entry(key).or_insert(site);
            }
        }
        report.edges += edges.len();
        let root = relative(&root, base);
        circles.extend(find_circles(&edges).into_iter().map(|mut circle| {
            circle.parent = format!("{} ({})", circle.parent, root.display());
            circle
        }));
    }
    report.files = reached.len();
    report.unreached = rust_files(dir)
        .into_iter()
        .filter(|f| !reached.contains(f))
        .map(|f| relative(&f, base))
        .collect();
    report.circles = circles.into_iter().collect();
    Ok(report)
}

fn relative(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base).unwrap_or(path).to_path_buf()
}

/// The groups of two or more siblings that reach each other.
fn find_circles(edges: &Edges) -> Vec<Circle> {
    let parents: BTreeSet<&ModPath> = edges.keys().map(|(p, _, _)| p).collect();
    let mut circles = Vec::new();
    for parent in parents {
        let next: BTreeMap<&str, BTreeSet<&str>> = edges
            .keys()
            .filter(|(p, _, _)| p == parent)
            .fold(BTreeMap::new(), |mut next, (_, from, to)| {
                next.entry(from.as_str()).or_default().insert(to.as_str());
                next
            });
        let reach = |start: &str| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![start.to_owned()];
            while let Some(node) = stack.pop() {
                for to in next.get(node.as_str()).into_iter().flatten() {
                    if seen.insert(to.to_string()) {
                        stack.push(to.to_string());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&str, BTreeSet<String>> =
            next.keys().map(|node| (*node, reach(node))).collect();
        let mut placed = BTreeSet::new();
        for node in next.keys() {
            if placed.contains(*node) || !reaches[node].contains(*node) {
                continue;
            }
            let members: Vec<String> = reaches[node]
                .iter()
                .filter(|other| {
                    reaches
                        .get(other.as_str())
                        .is_some_and(|r| r.contains(*node))
                })
                .cloned()
                .collect();
            placed.extend(members.iter().cloned());
            let sites = edges
                .iter()
                .filter(|((p, from, to), _)| {
                    p == parent && members.contains(from) && members.contains(to)
                })
                .map(|(_, site)| site.clone())
                .collect();
            circles.push(Circle {
                parent: std::iter::once("crate")
                    .chain(parent.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("::"),
                members,
                edges: sites,
            });
        }
    }
    circles
}
