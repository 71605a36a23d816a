//! The rooms of `src/` form layers (DESIGN §9): every `crate::` path in library code points to
//! its own room or one below it, so the imports have no circle. Test modules (`tests.rs`
//! files and `#[cfg(test)]` blocks) are not part of the library and are not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Top to bottom. `demo`, `status`, `explain` and `inventory` use the library as a user would
/// (`demo` starts the proxy), so they sit above start-up; the floor everyone stands on is last.
const LAYERS: &[&str] = &[
    "demo",
    "status",
    "explain",
    "inventory",
    "inject",
    "serve",
    "admin",
    "proxy",
    "state",
    "creds",
    "outbound",
    "tls",
    "config",
    "policy",
    "error",
    "audit",
    "body",
    "certs",
    "replace",
    "metrics",
    "digest",
    "clock",
    "accept",
];

/// Macros exported at the crate root, and the room that defines each.
const MACROS: &[(&str, &str)] = &[("fields", "audit")];

fn rank(room: &str) -> usize {
    LAYERS.iter().position(|r| *r == room).unwrap_or_else(|| panic!("room `{room}` is not in LAYERS"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every room a file names: the first segment after `crate::` in paths and `use` trees (in
/// macro bodies too), or after enough `super::` to reach the crate root from `module`. Items
/// under `#[cfg(test)]` are skipped.
struct Named<'m> {
    module: &'m [String],
    rooms: BTreeSet<String>,
}

impl Named<'_> {
    fn segments(&mut self, idents: &[String]) {
        let ups = idents.iter().take_while(|s| *s == "super").count();
        let room = match idents.first().map(String::as_str) {
            Some("crate") => idents.get(1),
            Some("super") if ups >= self.module.len() => idents.get(ups),
            _ => None,
        };
        if let Some(room) = room {
            let room = MACROS.iter().find(|(m, _)| m == room).map_or(room.as_str(), |(_, r)| r);
            self.rooms.insert(room.to_string());
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.leaf(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.segments(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }

    fn leaf(&mut self, prefix: &mut Vec<String>, ident: &syn::Ident) {
        prefix.push(ident.to_string());
        self.segments(prefix);
        prefix.pop();
    }

    /// `crate :: name` and `super :: … :: name` inside a macro's tokens.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let mut path: Vec<String> = Vec::new();
        let mut colons = 0;
        for tt in tokens {
            match tt {
                proc_macro2::TokenTree::Group(g) => {
                    self.segments(&path);
                    path.clear();
                    self.tokens(g.stream());
                }
                proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
                proc_macro2::TokenTree::Ident(i) => {
                    if colons != 2 {
                        self.segments(&path);
                        path.clear();
                    }
                    path.push(i.to_string());
                    colons = 0;
                }
                _ => {
                    self.segments(&path);
                    path.clear();
                    colons = 0;
                }
            }
        }
        self.segments(&path);
    }
}

fn cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().trim() == "test"))
}

impl<'ast> Visit<'ast> for Named<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !cfg_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let idents: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.segments(&idents);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.tokens(mac.tokens.clone());
    }
}

fn rooms_named(text: &str, module: &[String]) -> BTreeSet<String> {
    let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{}: {e}", module.join("/")));
    let mut named = Named { module, rooms: BTreeSet::new() };
    named.visit_file(&file);
    named.rooms
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked = 0;
    let mut edges = 0;
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let module: Vec<String> =
            rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if module == ["lib"] || module == ["main"] || module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let room = &module[0];
        let own = rank(room);
        let text = std::fs::read_to_string(file).unwrap();
        for named in rooms_named(&text, &module) {
            if named == *room {
                continue;
            }
            edges += 1;
            if rank(&named) < own {
                violations.push(format!("{} ({room}) imports {named}, a room above it", rel.display()));
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} files were checked");
    assert!(edges > 40, "only {edges} imports between rooms were seen: the scanner is broken");
    assert!(violations.is_empty(), "imports that point up:\n{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_groups_supers_and_macros_and_skips_tests() {
    let module: Vec<String> = vec!["creds".into(), "oauth".into()];
    let text = "use crate::{audit::Audit, outbound::{Client, TokenClient}, fields};\n\
                // use crate::serve::x;\n\
                fn f() { let s = \"crate::admin\"; crate::policy::x(); super::super::state::y(); }\n\
                fn g() { tracing::info!(x = %crate::tls::ca(), \"{}\", '{'); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::demo::z;\n}\n";
    let named = rooms_named(text, &module);
    let want: BTreeSet<String> =
        ["audit", "outbound", "policy", "state", "tls"].into_iter().map(String::from).collect();
    assert_eq!(named, want);
}
