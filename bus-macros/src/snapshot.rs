//! Expansion snapshots for the unit tests: pretty-printed expansions kept in
//! `tests/expand/*.expanded.rs`, which the crate docs and the README show.

use std::path::Path;

/// Asserts that `actual` is the content of `tests/expand/{file}`, showing the differing lines
/// if not. With `BUS_OVERWRITE_SNAPSHOTS=1`, writes `actual` there instead: review the diff.
#[track_caller]
pub(crate) fn assert_matches(file: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/expand")
        .join(file);
    if std::env::var_os("BUS_OVERWRITE_SNAPSHOTS").is_some_and(|value| value == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "the expansion differs from {}; if the change is intended, rerun with \
         BUS_OVERWRITE_SNAPSHOTS=1 and review the new file\n{}",
        path.display(),
        diff_lines(&expected, actual).join("\n"),
    );
}

/// The lines of `expected` and `actual` that differ, as `-` and `+` lines.
fn diff_lines(expected: &str, actual: &str) -> Vec<String> {
    let (expected, actual): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let mut diff = Vec::new();
    for line in 0..expected.len().max(actual.len()) {
        match (expected.get(line), actual.get(line)) {
            (Some(e), Some(a)) if e == a => {}
            (e, a) => {
                diff.extend(e.map(|e| format!("{:>4} - {e}", line + 1)));
                diff.extend(a.map(|a| format!("{:>4} + {a}", line + 1)));
            }
        }
    }
    diff
}
