use std::process::ExitCode;

fn main() -> ExitCode {
    ringbench::app::main()
}
