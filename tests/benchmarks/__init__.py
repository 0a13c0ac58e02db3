"""Benchmarks: each ``bench_*.py`` module has a ``main()`` that times a stage next to the bare operations it is
built on and prints the figures. Run them all with ``python -m tests.benchmarks`` (``make bench``)."""
