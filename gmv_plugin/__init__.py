"""GMValuator for FiftyOne: value every training image of a generative model
from the images it generated (training-free, model-agnostic).

Typical use::

    import gmv_plugin as gmv

    results = gmv.compute_values(
        dataset.match_tags("train"),
        dataset.match_tags("generated"),
        key="gmv",
        model="pixels",
        rerank="l2",
        quality="realism",
    )
    results.top(10)  # the most valuable training samples
"""

from gmv_plugin.embeddings import PixelEmbedder
from gmv_plugin import store
from gmv_plugin.images import ImageReadError
from gmv_plugin.index import INDEX_TYPES, recall_at_k
from gmv_plugin.locks import RunLockedError
from gmv_plugin.pipeline import (
    STAGES,
    Valuation,
    assign_values,
    build_index,
    compute_embeddings,
    compute_values,
    init_valuation,
    load_valuation,
    recall_contributors,
    rerank_contributors,
    score_quality,
    update_values,
)
from gmv_plugin.navigation import (
    contributions_view,
    contributor_credits,
    contributors_view,
    ranked_training_view,
)
from gmv_plugin.quality import QualityScorer
from gmv_plugin.report import build_report, report_markdown
from gmv_plugin.store import cleanup_runs
from gmv_plugin.shards import (
    compute_shard,
    compute_values_sharded,
    plan_shards,
    plan_train_shards,
    queue_generated,
    reduce_shards,
    shard_status,
)
from gmv_plugin.rerank import RERANKERS, L2Reranker, Reranker
from gmv_plugin.runs import (
    GMValuationConfig,
    GMValuationResults,
    delete_run,
    field_names,
    get_run_config,
    list_runs,
    load_results,
    rename_run,
    train_view,
)
from gmv_plugin.valuation import accumulate_values, contribution_scores
from gmv_plugin.weights import MissingWeightsError
