"""Benchmarks: component scripts (bench_driver, bench_kube, bench_plan, bench_cold_path,
bench_window, bench_bfd) and the system suite.

`python -m integration.bench [--small|--medium] [--only NAME] [--out DIR]` runs the system
suite (system.py: the lab; scenarios.py: what is measured; report.py: the table and the
plots) and writes results.md + PNG plots into integration/bench/results/.
"""
