"""Pretrained weights: where each library looks, the check before work,
download on first use, bundles for air-gapped machines and a mirror.

- :mod:`.locations`: the cache roots (FiftyOne zoo dir, torch hub, pyiqa,
  Hugging Face, DreamSim) and :class:`MissingWeightsError`.
- :mod:`.registry`: every model the plugin can use, its files and sources.
- :mod:`.checks`: ``check_*`` before work; ``download=True`` on first use.
- :mod:`.fetching`: offline switches, mirror, verified resumable downloads.
- :mod:`.inventory`: per-model status for the CLI and the App's forms.
- :mod:`.archive`: ``bundle`` / ``install``.

Command line: ``python -m gmv_plugin.weights status|download|bundle|install|urls``.
"""

from gmv_plugin.weights.archive import BundleError, bundle, install
from gmv_plugin.weights.checks import (
    LPIPS_NETS,
    check_dreamsim,
    check_lpips,
    check_model,
    check_pyiqa,
    check_zoo_model,
    dreamsim_expected_files,
    lpips_lin_path,
    lpips_trunk_url,
    pyiqa_metric_config,
    zoo_model_expected_files,
)
from gmv_plugin.weights.fetching import (
    MIRROR_ENV,
    OFFLINE_ENV,
    downloads_disabled,
    effective_url,
    mirror_base,
)
from gmv_plugin.weights.locations import (
    DREAMSIM_DIR_ENV,
    MissingWeightsError,
    dreamsim_cache_dir,
    hub_checkpoint_path,
    hub_offline,
    pyiqa_cache_dir,
)
from gmv_plugin.weights.registry import KNOWN_MODELS, get_model
from gmv_plugin.weights.inventory import download, format_status, model_status, status
