use std::process::ExitCode;

fn main() -> ExitCode {
    ringbench::cli::main()
}
