fn main() -> std::process::ExitCode {
    voxgate::cli::main()
}
