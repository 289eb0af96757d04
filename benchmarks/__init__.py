"""lebench's benchmarks, run from the repository root as `python -m benchmarks.bench_NAME`
(docs/performance.md); what they share is in `common`, the naive loops they race in `naive`."""
