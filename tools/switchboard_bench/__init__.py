"""`switchboard-bench`: Switchboard vs. a direct relay at several concurrency levels (see docs/benchmarks.md)."""
