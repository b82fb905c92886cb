//! The README shows real code: its tour is `examples/tour.rs` (which `cargo test` compiles), its
//! expansion is the macro's snapshot, and its first commands are the ones CI runs.

use std::path::Path;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The code block between `<!-- {marker}: path -->` and `<!-- /{marker} -->`, and that path.
fn block<'a>(readme: &'a str, marker: &str) -> (&'a str, &'a str) {
    let open = format!("<!-- {marker}: ");
    let start = readme
        .find(&open)
        .unwrap_or_else(|| panic!("no `{open}` in README.md"));
    let rest = &readme[start + open.len()..];
    let (path, rest) = rest
        .split_once(" -->\n```rust\n")
        .expect("marker, then a rust block");
    let end = rest.find("```\n<!-- /").expect("closing marker");
    (path, &rest[..end])
}

#[test]
fn the_tour_is_the_tour_example() {
    let readme = read("README.md");
    let (path, shown) = block(&readme, "tour");
    let example = read(path);
    let code = example
        .split_once("// README tour starts here.\n")
        .expect("marker line in the example")
        .1;
    assert_eq!(shown, code, "README.md's tour differs from {path}");
}

#[test]
fn the_expansion_is_the_macro_snapshot() {
    let readme = read("README.md");
    let (path, shown) = block(&readme, "expansion");
    assert_eq!(
        shown,
        read(path),
        "README.md's expansion differs from {path}"
    );
}

#[test]
fn the_readme_opens_with_the_two_commands_ci_runs() {
    let readme = read("README.md");
    let first_block = readme
        .split("```sh\n")
        .nth(1)
        .expect("a sh block")
        .split("```")
        .next()
        .unwrap();
    let commands: Vec<&str> = first_block
        .lines()
        .map(|line| line.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --example quickstart",
            "cargo test --workspace --all-features"
        ]
    );
    let ci = read(".ci/run");
    for command in commands {
        assert!(
            ci.lines().any(|line| line.trim() == command),
            "`.ci/run` must run `{command}` as the README gives it"
        );
    }
}
