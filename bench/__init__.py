"""Benchmarks: billow's ingestion and rating paths measured as ratios against
a floor (raw COPY, a bare GROUP BY) run in the same process on the same data.
"""
