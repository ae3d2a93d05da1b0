//! The `oz` binary.

fn main() -> std::process::ExitCode {
    oz_cli::cli::main()
}
