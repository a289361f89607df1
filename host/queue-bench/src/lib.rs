//! Nothing to link: the benchmarks under `benches/` are the crate. Run
//! `cargo bench -p kiln-queue-bench --bench queue` or `--bench postgres`.
