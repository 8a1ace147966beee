"""GMValuator benchmark on MNIST: ``python -m benchmarks.run`` (see README.md)."""
