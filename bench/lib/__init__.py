"""Shared parts of the benchmark harness (bench/run): processes and ports
(procs), the build and the machine (env), statistics (stats), progress on the
terminal (progress) and the report files (report). Standard library only."""
