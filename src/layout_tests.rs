//! The crate's modules form a layered graph: no top-level module reaches,
//! through `crate::`/`super::` paths, a module that reaches it back, and no
//! file in a module folder does that to a sibling. A cycle makes modules
//! impossible to read, test or move on their own, so it fails the build.
//!
//! `cargo test --lib layout_tests -- --nocapture` prints the module graph.
//!
//! Paths are read with a small tokenizer (comments and literals skipped,
//! inline `mod x { .. }` blocks tracked for `super::`), not a full parser:
//! macros that build paths from pieces are not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path below the crate root, e.g. `["status", "metrics"]`.
type ModPath = Vec<String>;

/// Where a dependency was seen, for the failure message.
#[derive(Debug, Clone)]
struct Site {
    file: PathBuf,
    line: usize,
}

/// Edges between file modules, each with the first place it was seen.
type Graph = BTreeMap<ModPath, BTreeMap<ModPath, Site>>;

/// The tokens paths are made of; everything else is `Other`.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

fn tokenize(source: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
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
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&chars, i + 1, Quote::Escaped, &mut line);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if let Some((body, quote)) = prefixed_string(&word, &chars, i) {
                i = skip_string(&chars, body, quote, &mut line);
            } else if word == "b" && chars.get(i) == Some(&'\'') {
                i = skip_byte_char(&chars, i + 1);
            } else {
                tokens.push((Tok::Ident(word), line));
            }
        } else if c == ':' && next == Some(':') {
            tokens.push((Tok::PathSep, line));
            i += 2;
        } else {
            let tok = match c {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                other => Tok::Other(other),
            };
            tokens.push((tok, line));
            i += 1;
        }
    }
    tokens
}

/// How a string literal ends.
#[derive(Clone, Copy)]
enum Quote {
    /// `"..."`, `b"..."`: backslash escapes.
    Escaped,
    /// `r#"..."#` with this many `#`: no escapes.
    Raw(usize),
}

/// After a prefix word (`b`, `c`, `r`, `br`, `cr`) ending at `i`: where the
/// string's body starts and how it ends, if a string literal follows.
fn prefixed_string(word: &str, chars: &[char], i: usize) -> Option<(usize, Quote)> {
    match word {
        "b" | "c" => (chars.get(i) == Some(&'"')).then_some((i + 1, Quote::Escaped)),
        "r" | "br" | "cr" => {
            let mut j = i;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            (chars.get(j) == Some(&'"')).then_some((j + 1, Quote::Raw(j - i)))
        }
        _ => None,
    }
}

/// Skips a string body from `i`, counting its lines; returns the index
/// after the closing quote.
fn skip_string(chars: &[char], mut i: usize, quote: Quote, line: &mut usize) -> usize {
    let hashes = match quote {
        Quote::Escaped => 0,
        Quote::Raw(hashes) => hashes,
    };
    while i < chars.len() {
        match chars[i] {
            '\\' if matches!(quote, Quote::Escaped) => {
                *line += usize::from(chars.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' if chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes =>
            {
                return i + 1 + hashes;
            }
            c => {
                *line += usize::from(c == '\n');
                i += 1;
            }
        }
    }
    i
}

fn skip_byte_char(chars: &[char], mut i: usize) -> usize {
    if chars.get(i) == Some(&'\\') {
        i += 2;
    }
    while i < chars.len() && chars[i] != '\'' {
        i += 1;
    }
    i + 1
}

/// Every `.rs` file under `src/` with its module path; `lib.rs` and
/// `main.rs` (the binary, a crate of its own) are left out.
fn source_files(src: &Path) -> Vec<(ModPath, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src dir")
            .map(|entry| entry.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(src).expect("under src");
            let mut path: ModPath = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if path == ["lib"] || path == ["main"] {
                return None;
            }
            if path.last().is_some_and(|last| last == "mod") {
                path.pop();
            }
            Some((path, file))
        })
        .collect()
}

/// One parsed use-tree leaf or expression path, as written.
struct RawPath {
    segments: Vec<String>,
    line: usize,
}

/// Reads a path (or `use` tree) starting at `tokens[i]`; returns the leaves
/// and the index after it.
fn read_tree(tokens: &[(Tok, usize)], mut i: usize, prefix: &[String]) -> (Vec<RawPath>, usize) {
    let mut segments = prefix.to_vec();
    let line = tokens[i].1;
    while let Some((Tok::Ident(word), _)) = tokens.get(i) {
        segments.push(word.clone());
        i += 1;
        if tokens.get(i).map(|t| &t.0) != Some(&Tok::PathSep) {
            return (vec![RawPath { segments, line }], i);
        }
        i += 1;
    }
    match tokens.get(i).map(|t| &t.0) {
        Some(Tok::Open) => {
            let mut leaves = Vec::new();
            i += 1;
            loop {
                match tokens.get(i).map(|t| &t.0) {
                    Some(Tok::Close) => return (leaves, i + 1),
                    Some(Tok::Comma) => i += 1,
                    Some(Tok::Ident(_)) | Some(Tok::Star) | Some(Tok::Open) => {
                        let (inner, after) = read_tree(tokens, i, &segments);
                        leaves.extend(inner);
                        // Skip `as alias` and anything else up to the next item.
                        i = after;
                        while !matches!(
                            tokens.get(i).map(|t| &t.0),
                            None | Some(Tok::Comma) | Some(Tok::Close)
                        ) {
                            i += 1;
                        }
                    }
                    None => return (leaves, i),
                    Some(_) => i += 1,
                }
            }
        }
        // `::*`, `::<T>` and the like: the path so far is what is named.
        _ => (vec![RawPath { segments, line }], i),
    }
}

/// Resolves a written path to the file module it names, if it names one
/// of ours. `here` is the module the path is written in.
fn resolve(
    written: &[String],
    here: &[String],
    modules: &BTreeSet<ModPath>,
    file_module: &[String],
) -> Option<ModPath> {
    let (first, rest) = written.split_first()?;
    let mut base: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        _ => {
            let mut child = here.to_vec();
            child.push(first.clone());
            if !modules.contains(&child) {
                return None;
            }
            child
        }
    };
    for segment in rest {
        if segment == "super" {
            base.pop()?;
            continue;
        }
        if segment == "self" {
            continue;
        }
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if modules.contains(&deeper) {
            base = deeper;
        } else {
            break;
        }
    }
    // An inline module's own items resolve to the file that holds it.
    while !base.is_empty() && !modules.contains(&base) {
        base.pop();
    }
    if base.is_empty() || base == file_module {
        return None;
    }
    Some(base)
}

/// The file modules that `source`, the file of `module`, names, each with
/// the line of a mention.
fn dependencies(
    source: &str,
    module: &[String],
    modules: &BTreeSet<ModPath>,
) -> Vec<(ModPath, usize)> {
    let tokens = tokenize(source);
    // Inline `mod name {` blocks: (name, brace depth outside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if inline.last().is_some_and(|(_, outside)| *outside == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(word) if word == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Open, _))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(_) => {
                let starts_path = tokens.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                    && !matches!(
                        i.checked_sub(1).map(|p| &tokens[p].0),
                        Some(Tok::PathSep) | Some(Tok::Other('.'))
                    );
                if starts_path {
                    let here: ModPath = module
                        .iter()
                        .cloned()
                        .chain(inline.iter().map(|(name, _)| name.clone()))
                        .collect();
                    let (leaves, after) = read_tree(&tokens, i, &[]);
                    for leaf in leaves {
                        if let Some(target) = resolve(&leaf.segments, &here, modules, module) {
                            found.push((target, leaf.line));
                        }
                    }
                    i = after;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn file_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = source_files(&src);
    let modules: BTreeSet<ModPath> = files.iter().map(|(path, _)| path.clone()).collect();
    let mut graph = Graph::new();
    for (module, file) in &files {
        let edges = graph.entry(module.clone()).or_default();
        let source = std::fs::read_to_string(file).expect("read source");
        for (target, line) in dependencies(&source, module, &modules) {
            edges.entry(target).or_insert_with(|| Site {
                file: file.strip_prefix(&src).expect("under src").to_path_buf(),
                line,
            });
        }
    }
    graph
}

/// The graph between top-level modules.
fn top_level(graph: &Graph) -> Graph {
    let mut top = Graph::new();
    for (from, edges) in graph {
        let from_top = vec![from[0].clone()];
        let entry = top.entry(from_top.clone()).or_default();
        for (to, site) in edges {
            let to_top = vec![to[0].clone()];
            if to_top != from_top {
                entry.entry(to_top).or_insert_with(|| site.clone());
            }
        }
    }
    top
}

/// The graph between the files of one module folder (`status`,
/// `status::api`, ...), as seen from inside the folder. A folder's own
/// `mod.rs` declares and re-exports its files, so only edges between
/// sibling files and from a file up to `mod.rs` count.
fn within_folder(graph: &Graph, folder: &str) -> Graph {
    let mut inside = Graph::new();
    for (from, edges) in graph.iter().filter(|(from, _)| from[0] == folder) {
        let entry = inside.entry(from.clone()).or_default();
        for (to, site) in edges.iter().filter(|(to, _)| to[0] == folder) {
            let downward = to.len() > from.len() && to.starts_with(from);
            if !downward {
                entry.insert(to.clone(), site.clone());
            }
        }
    }
    inside
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'g>(state: &mut State<'g>, node: &'g ModPath) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for target in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.found
}

fn describe(graph: &Graph, components: &[Vec<ModPath>]) -> String {
    let mut out = String::new();
    for component in components {
        let members: BTreeSet<&ModPath> = component.iter().collect();
        let names: Vec<String> = component.iter().map(|m| m.join("::")).collect();
        let _ = writeln!(out, "cycle: {}", names.join(", "));
        for from in component {
            for (to, site) in graph[from].iter().filter(|(to, _)| members.contains(to)) {
                let _ = writeln!(
                    out,
                    "  {} -> {}  (src/{}:{})",
                    from.join("::"),
                    to.join("::"),
                    site.file.display(),
                    site.line
                );
            }
        }
    }
    out
}

fn print_graph(title: &str, graph: &Graph) {
    println!("{title}");
    for (from, edges) in graph {
        let targets: Vec<String> = edges.keys().map(|to| to.join("::")).collect();
        println!("  {} -> {}", from.join("::"), targets.join(", "));
    }
}

#[test]
fn top_level_modules_have_no_cycles() {
    let graph = top_level(&file_graph());
    print_graph("top-level module graph:", &graph);
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", describe(&graph, &found));
}

#[test]
fn files_within_a_module_folder_have_no_cycles() {
    let graph = file_graph();
    let folders: BTreeSet<&String> = graph
        .keys()
        .filter(|m| m.len() > 1)
        .map(|m| &m[0])
        .collect();
    let mut report = String::new();
    for folder in folders {
        let inside = within_folder(&graph, folder);
        print_graph(&format!("files of {folder}:"), &inside);
        report.push_str(&describe(&inside, &cycles(&inside)));
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn paths_are_read_from_code_not_from_comments_or_literals() {
    let modules: BTreeSet<ModPath> = [
        vec!["a".to_string()],
        vec!["b".into()],
        vec!["c".into()],
        vec!["c".into(), "d".into()],
        vec!["c".into(), "x".into()],
    ]
    .into_iter()
    .collect();
    let source = r##"
        // use crate::a;
        /* crate::a::X */
        const S: &str = "crate::a::Y";
        const R: &str = r#"crate::a::Z"#;
        const Q: char = '\'';
        const P: &str = r"C:\";
        const B: &[u8] = b"\"crate::a::W";
        fn f<'l>(x: &'l str) -> char { '"' }
        use crate::{b::Thing, c::{self, d::Other}};
        mod tests { use super::*; }
    "##;
    let mut found: Vec<String> = dependencies(source, &["c".to_string(), "x".into()], &modules)
        .into_iter()
        .map(|(module, _)| module.join("::"))
        .collect();
    found.sort();
    found.dedup();
    assert_eq!(found, ["b", "c", "c::d"]);
}

#[test]
fn a_cycle_is_found_with_its_members_only() {
    let module = |name: &str| vec![name.to_string()];
    let site = Site {
        file: PathBuf::from("x.rs"),
        line: 1,
    };
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "a"), ("c", "a"), ("b", "d")] {
        graph
            .entry(module(from))
            .or_default()
            .insert(module(to), site.clone());
    }
    assert_eq!(cycles(&graph), [vec![module("a"), module("b")]]);
}
