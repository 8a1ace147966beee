"""Real data and small generative models for the quickstart and the benchmarks.

- :mod:`gmv_plugin.demo.data`: MNIST and scikit-learn digits loaders, PNG writing, and
  :func:`~gmv_plugin.demo.data.make_dataset` (training + generated samples in one dataset);
- :mod:`gmv_plugin.demo.generators`: CPU-trainable class-conditional VAE and GAN, a
  classifier that labels generated images, and cached checkpoints;
- :mod:`gmv_plugin.demo.quickstart`: ``python -m gmv_plugin.demo.quickstart``.

Nothing is imported here, so ``import gmv_plugin.demo`` loads neither torch nor FiftyOne.
"""
