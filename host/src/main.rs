//! The `kiln` binary: the library's command line ([`kiln::cli`]) and
//! nothing else.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
