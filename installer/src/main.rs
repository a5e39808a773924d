//! gpu-passthrough: the operator's CLI (issue 4, not built yet).

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("gpu-passthrough: not implemented yet (see issue 4)");
    ExitCode::from(2)
}
