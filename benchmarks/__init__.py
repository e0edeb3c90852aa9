"""Speed measurements of the inversion engine, not research: how fast it runs, not what it finds.

``python -m benchmarks.throughput`` times batched inversions of the seed U-Net (``--torch``
beside the same loop in PyTorch eager, :mod:`benchmarks.torch_baseline`);
``python -m benchmarks.layer_costs`` splits a step's time by layer; :mod:`benchmarks.benchmarking`
holds their timing, matmul-peak, memory and machine helpers. The JSON and log files in this
folder are the measured runs that BENCHMARKS.md discusses. Importing the package does nothing.
"""
