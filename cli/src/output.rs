//! Exit codes, errors and what goes to stdout and stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use stream::json::{self, Layout, Value};

/// A command failure: the message and its exit code.
#[derive(Debug)]
pub enum CliError {
    /// A check failed (verification, decryption, a line that does not sign): exit 1.
    Check(String),
    /// Bad usage or input (missing file, malformed key, unreadable directory): exit 2.
    Input(String),
    /// A service could not be reached or did not answer in time (S3, a confirmation
    /// endpoint, a download): exit 2, as the reference's network errors.
    Network(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Check(_) => 1,
            CliError::Input(_) | CliError::Network(_) => 2,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Check(m) | CliError::Input(m) | CliError::Network(m) => f.write_str(m),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Shorthand for an input error from anything displayable.
pub fn input<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Input(e.to_string())
}

/// Shorthand for a failed check from anything displayable.
pub fn check<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Check(e.to_string())
}

/// Where human messages go.
pub struct Output {
    pub quiet: bool,
}

impl Output {
    /// A line on stderr, unless quiet.
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }

    /// A progress bar on stderr when it is a terminal and messages are wanted.
    pub fn progress(&self, total: u64, unit_bytes: bool, show: bool) -> ProgressBar {
        if self.quiet || !show || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        let template = if unit_bytes {
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        } else {
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, {eta})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    }
}

/// Prints a JSON document on stdout as the reference does (`json.dumps(v, indent=2)`).
pub fn print_json(value: &Value) {
    match json::python_dumps(value, Layout::Indent2) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}
