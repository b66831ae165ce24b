"""One run in-process: training, metrics, cost, test-time robustness, the speed benchmark and
the row a run becomes."""
