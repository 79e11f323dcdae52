// Every figure in BENCHMARKS.md is measured on mimalloc: the key table's
// entry is sized to one of its classes (`key::tests` keeps it there), and
// without transparent huge pages (`no_thp`) idle RSS stays near 14 MiB
// ("Footprint"). Another allocator means measuring those again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
