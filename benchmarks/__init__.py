"""The benchmarks behind `make bench`: each compares our code against the plain baseline
doing the same work, in one run, and reports the ratio (never a lone time).

Every module `benchmarks/bench_<name>.py` defines `run(quick: bool) -> list[dict]`, one
row per measurement; `python -m benchmarks [NAME ...] [--quick]` runs them and prints the
tables, and writes them as JSON under `.facerestore/bench/`.
"""
