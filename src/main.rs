// The ext_authz path decodes Envoy's header map into many small strings per
// request; mimalloc makes those allocations markedly cheaper than glibc's
// malloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
