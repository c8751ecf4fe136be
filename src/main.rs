//! The `sremp` binary: parse the command line, call into the library's [`sremp::cli`], print
//! the error. Every command and all output live in `sremp::cli`.

use clap::Parser;
use sremp::cli::{print_json_error, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Everything this process creates (data dirs, sled's files, stats and address files, the
    // control socket) is owner-only, whatever the caller's umask; files that need it are also
    // chmod-ed explicitly.
    #[cfg(unix)]
    // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let json_requested = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json_requested && e.use_stderr() => {
            print_json_error("usage", &e.kind().to_string(), &e.to_string());
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
    match sremp::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            print_json_error(e.kind(), &e.to_string(), &e.to_string());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
