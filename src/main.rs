fn main() -> std::process::ExitCode {
    mpo::cli::main()
}
