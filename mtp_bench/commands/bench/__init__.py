"""`mtp-bench bench NAME`: speed and memory benchmarks (ratios of two measurements taken side by
side, medians of repeats). Part of the commands layer: may import every layer."""
