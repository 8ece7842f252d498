//! The command line as a user sees it: help texts, errors and exit codes, as snapshots
//! (`tests/cmd/*.toml` with their `.stdout`/`.stderr`). After an intended change, refresh
//! them with `TRYCMD=overwrite cargo test -p peaqos --test snapshots` and read the diff.

#[test]
fn command_line_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
