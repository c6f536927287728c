"""`resnet search`: the indexed images most similar to each query image.

The index's record decides the model, weights, size, pooling, layer and resize; the queries'
rows come from extract's pipeline with exactly those, and the neighbours from faiss's exact
inner-product search.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.similarity.index import load_index, record_of
from resnet_cli.similarity.neighbors import knn
from resnet_cli.similarity.records import Neighbor, SearchHit
from resnet_cli.similarity.vectors import FeatureOptions, embed, options_from_record

if TYPE_CHECKING:
    from resnet_cli.inference import RunnerFactory
    from resnet_cli.loaded import FailureHandler
    from resnet_cli.models import ModelOptions


def search_index(queries: Sequence[str], index: Path, *, k: int, options: ModelOptions,
                 features: FeatureOptions, progress: bool = True,
                 on_failure: FailureHandler | None = None,
                 runner: RunnerFactory | None = None) -> list[SearchHit]:
    """The `k` nearest indexed images of each readable query, nearest first.

    `options` and `features` hold only what the user gave ("" / None for the rest): the
    index's record fills them in, and a value that conflicts with it is refused before any
    model is loaded.

    Raises:
        UsageError: not an index, a conflicting option, an index of random weights.
        OutputError: no query could be read.
    """
    options, features = options_from_record(record_of(index), given=options,
                                            given_features=features, where=str(index))
    found = load_index(index)
    asked = embed(queries, options=options, features=features, progress=progress,
                  on_failure=on_failure, runner=runner)
    sims, ids = knn(found.vectors, asked.vectors, k)
    return [SearchHit(path, tuple(Neighbor(found.paths[j], float(s))
                                  for j, s in zip(row_ids.tolist(), row_sims.tolist(),
                                                  strict=True) if j >= 0))
            for path, row_sims, row_ids in zip(asked.paths, sims, ids, strict=True)]
