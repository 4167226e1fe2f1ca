"""Benchmarks. Each ``bench/bench_*.py`` has ``main(argv) -> int``, measures its
own baseline in the same run and prints a ratio; ``python -m bench [NAME...]``
runs them. Figures and commands are recorded in docs/benchmarks.md."""
