"""Benchmarks: billow's ingestion and rating paths measured as ratios against
a floor (raw COPY, a bare GROUP BY) run in the same process on the same data.

``python -m bench ingest`` and ``python -m bench rating`` (see
``bench/__main__.py`` for the options; defaults finish in well under a
minute). A fresh database is created for every run: on an embedded
PostgreSQL in a temporary directory, or on ``BILLOW_DATABASE_URL`` when it is
set (a ``billow_bench_*`` database, dropped afterwards). Data comes from a
fixed seed. Figures and how to read them: ``bench/RESULTS.md``.
"""
