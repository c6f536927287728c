"""`resnet index`, `search`, `duplicates` and `audit`: from features to answers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import (
    FailureReporter,
    print_warning,
    read_inputs,
    user_errors,
)
from resnet_cli.cli.options import (
    RAY_TIMEOUT,
    BatchSizeOpt,
    DataDirArg,
    DeviceOpt,
    ImageSizeOpt,
    InputsArg,
    ModelOpt,
    PoolingOpt,
    PrecisionOpt,
    QuietOpt,
    RayActorsOpt,
    RayOpt,
    RayTimeoutOpt,
    RecursiveOpt,
    ResizeOpt,
    WeightsOpt,
    ray_runner_for,
)
from resnet_cli.devices import Precision
from resnet_cli.errors import UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.models import ModelOptions, Pooling
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render import make_console
from resnet_cli.render.similarity import ListFormat
from resnet_cli.similarity.copies import DEFAULT_COPY_BITS
from resnet_cli.similarity.duplicates import DEFAULT_THRESHOLD, Keep
from resnet_cli.similarity.vectors import FeatureOptions

LayerOpt = Annotated[str | None, typer.Option(
    "--layer", metavar="NAME", help="Features of this backbone layer (as extract).")]
FromOpt = Annotated[Path | None, typer.Option(
    "--from", metavar="FEATS", dir_okay=False,
    help="Rows extract already wrote (.npy with .paths.txt and .card.json beside, or .npz) "
         "instead of images.")]
IndexOpt = Annotated[Path | None, typer.Option(
    "--index", metavar="NAME.index", file_okay=False, help="An index from resnet index.")]
ThresholdOpt = Annotated[float, typer.Option(
    "--threshold", min=-1.0, max=1.0, metavar="T",
    help="Near duplicates: cosine similarity of features at least T to the group's "
         "representative (not searched with random weights).")]
CopyBitsOpt = Annotated[int, typer.Option(
    "--copy-bits", min=0, max=32, metavar="N",
    help="Copies: perceptual hashes at most N of 64 bits apart from the representative.")]
ListFormatOpt = Annotated[ListFormat, typer.Option(
    "--format", "-f", case_sensitive=False, help="table, json or csv.")]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", metavar="PAGE.html", dir_okay=False,
    help="Also write a self-contained page with thumbnails.")]

MODEL_PARAMS = ("model", "weights", "image_size")


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _model_options(ctx: typer.Context, *, only_given: bool, model: str, weights: str,
                   image_size: int | None, device: str, precision: Precision
                   ) -> ModelOptions:
    """The model options; with `only_given`, "" / None for those not on the command line
    (a card fills them in)."""
    keep = {n: not only_given or _given(ctx, n) for n in MODEL_PARAMS}
    return ModelOptions(model=model if keep["model"] else "",
                        weights=weights if keep["weights"] else "",
                        image_size=image_size if keep["image_size"] else None,
                        device=device, precision=precision.value)


def _feature_options(pooling: Pooling | None, layer: str | None, resize: ResizeMode | None,
                     batch_size: int) -> FeatureOptions:
    return FeatureOptions(pooling=pooling.value if pooling else None, layer=layer,
                          resize=resize, batch_size=batch_size)


def index(
    ctx: typer.Context,
    inputs: InputsArg = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="NAME.index", file_okay=False,
        help="The index folder to write (atomically).")] = None,
    append: Annotated[Path | None, typer.Option(
        "--append", metavar="NAME.index", file_okay=False,
        help="Add the inputs to this index, with the model its card names; images it holds "
             "are not computed again. Interrupted, it leaves the old index whole.")] = None,
    from_file: FromOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = None,
    layer: LayerOpt = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index.")
                         ] = False,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """Index images for search: unit-length features (extract's pipeline), paths and card.

    The index is a folder (vectors.npy, vectors.paths.txt, vectors.card.json, index.json):
    nothing pickled. Unreadable images are reported, left out, and make the exit code 1.

    Example: resnet index photos/ -o photos.index; resnet index new/ --append photos.index
    """
    from resnet_cli.render.similarity import index_line
    from resnet_cli.similarity.index import build_index, record_of
    from resnet_cli.similarity.vectors import options_from_record

    failures = FailureReporter()
    with user_errors():
        if (output is None) == (append is None):
            raise UsageError("Give -o NAME.index for a new index, or --append NAME.index to "
                             "add to one (not both).")
        target = output or append or Path()
        options = _model_options(ctx, only_given=append is not None, model=model,
                                 weights=weights, image_size=image_size, device=device,
                                 precision=precision)
        features = _feature_options(pooling, layer, resize, batch_size)
        if append is not None and from_file is None:  # conflicts before reading stdin
            options, features = options_from_record(record_of(append), given=options,
                                                    given_features=features,
                                                    where=str(append))
        paths = [] if from_file is not None else read_inputs(inputs, recursive=recursive)
        summary = build_index(
            paths, target, options=options, features=features,
            append=append is not None, from_file=from_file, overwrite=overwrite,
            progress=not quiet, on_failure=failures,
            runner=ray_runner_for(ray, ray_actors, ray_timeout, options))
    if not quiet:
        make_console(stderr=True).print(index_line(summary), markup=False, highlight=False)
    raise typer.Exit(failures.exit_code)


def search(
    ctx: typer.Context,
    queries: InputsArg = None,
    index_path: Annotated[Path, typer.Option(
        "--index", metavar="NAME.index", file_okay=False, show_default=False,
        help="The index to search (its card decides the model).")] = ...,  # type: ignore[assignment]
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, metavar="K",
                                   help="Neighbours per query.")] = 10,
    fmt: ListFormatOpt = ListFormat.table,
    html: HtmlOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = None,
    layer: LayerOpt = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """The K indexed images most similar to each query image, with cosine similarity.

    The index's card decides the model, size and preprocessing: model options are not
    needed, and one that conflicts with the card is a usage error (exit 2).

    Example: resnet search query.jpg --index photos.index -k 5 --format json
    """
    import sys

    from resnet_cli.render.findings import write_page
    from resnet_cli.render.similarity import search_page, write_search
    from resnet_cli.similarity.index import record_of
    from resnet_cli.similarity.search import search_index
    from resnet_cli.similarity.vectors import options_from_record

    failures = FailureReporter()
    with user_errors():
        given = _model_options(ctx, only_given=True, model=model, weights=weights,
                               image_size=image_size, device=device, precision=Precision.fp32)
        features = _feature_options(pooling, layer, resize, batch_size)
        options, features = options_from_record(record_of(index_path), given=given,
                                                given_features=features, where=str(index_path))
        paths = read_inputs(queries, recursive=recursive)
        hits = search_index(paths, index_path, k=k, options=options, features=features,
                            progress=not quiet, on_failure=failures,
                            runner=ray_runner_for(ray, ray_actors, ray_timeout, options))
        if html is not None:
            write_page(html, search_page(hits, str(index_path)))
    write_search(hits, fmt, sys.stdout)
    raise typer.Exit(failures.exit_code)


def duplicates(
    inputs: InputsArg = None,
    index_path: IndexOpt = None,
    from_file: FromOpt = None,
    threshold: ThresholdOpt = DEFAULT_THRESHOLD,
    copy_bits: CopyBitsOpt = DEFAULT_COPY_BITS,
    fmt: ListFormatOpt = ListFormat.table,
    html: HtmlOpt = None,
    remove_list: Annotated[Path | None, typer.Option(
        "--remove-list", metavar="FILE", dir_okay=False,
        help="Write the paths to remove, all but one of each group, one per line. Nothing "
             "is ever deleted or moved.")] = None,
    keep: Annotated[Keep, typer.Option(
        "--keep", case_sensitive=False,
        help="Which image of a group the removal list keeps: the first in input order, or "
             "the largest (most pixels).")] = Keep.first,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = None,
    layer: LayerOpt = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """Groups of copies (perceptual hash) and near duplicates (features) among images.

    Copies are the same picture re-encoded, resized or slightly cropped, found whatever the
    weights; near duplicates need trained weights (not searched with --weights none). Groups
    never chain: every member is within the threshold of its group's representative.

    Example: resnet duplicates photos/ --weights none --remove-list remove.txt
    """
    import sys

    from resnet_cli.render.findings import write_page
    from resnet_cli.render.similarity import duplicates_page, write_duplicates, write_lines
    from resnet_cli.similarity.copies import require_copy_finding
    from resnet_cli.similarity.duplicates import find_duplicates, removal_list
    from resnet_cli.similarity.index import load_index
    from resnet_cli.similarity.vectors import embed, read_feature_file

    failures = FailureReporter()
    with user_errors():
        sources = sum(x is not None for x in (index_path, from_file)) + bool(inputs)
        if sources > 1:
            raise UsageError("Give images, --index or --from, not more than one.")
        require_copy_finding()
        vectors = None
        if index_path is not None or from_file is not None:
            found = (load_index(index_path) if index_path is not None
                     else read_feature_file(from_file or Path()))
            paths, vectors = found.paths, found.vectors
            reproducible = found.record.reproducible
        else:
            paths = read_inputs(inputs, recursive=recursive)
            reproducible = weights.lower() != "none"
            if reproducible:  # random weights: no model at all, the hashes alone
                options = ModelOptions(model=model, weights=weights, image_size=image_size,
                                       device=device, precision=precision.value)
                features = _feature_options(pooling, layer, resize, batch_size)
                found = embed(paths, options=options, features=features, progress=not quiet,
                              on_failure=failures,
                              runner=ray_runner_for(ray, ray_actors, ray_timeout, options))
                paths, vectors = found.paths, found.vectors
        if not reproducible:
            print_warning("random weights: near duplicates are not searched, copies only")
        result = find_duplicates(paths, vectors if reproducible else None, threshold=threshold,
                                 copy_bits=copy_bits, on_failure=failures)
        if html is not None:
            write_page(html, duplicates_page(result))
        if remove_list is not None:
            write_lines(remove_list, removal_list(result, keep=keep, order=paths))
    write_duplicates(result, fmt, sys.stdout)
    raise typer.Exit(failures.exit_code)


def audit(
    data_dir: DataDirArg,
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="OUT", file_okay=False, show_default=False,
        help="Folder for audit.json, label_issues.csv and index.html (created; those files "
             "replaced atomically).")] = ...,  # type: ignore[assignment]
    test: Annotated[Path | None, typer.Option(
        "--test", metavar="TEST_DIR", file_okay=False,
        help="Images to check for leaks from DATA_DIR (copies and near duplicates).")] = None,
    threshold: ThresholdOpt = DEFAULT_THRESHOLD,
    copy_bits: CopyBitsOpt = DEFAULT_COPY_BITS,
    folds: Annotated[int, typer.Option("--folds", min=2, max=20, metavar="K",
                                       help="Cross-validation folds.")] = 5,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = None,
    layer: LayerOpt = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """What to fix in a folder-per-class dataset before training, most important first.

    Likely label errors (K-fold out-of-sample probabilities of a linear model on the
    features, ranked by cleanlab, with the suggested class), copies and near duplicates,
    leaks into --test, outliers, class imbalance, overlapping classes and unreadable files.
    Exit 0 when it ran, whatever it found; it never changes the dataset.

    Example: resnet audit data/ --test test/ --weights runs/a/model.keras -o audit/
    """
    from resnet_cli.outputs import check_creatable
    from resnet_cli.render.similarity import audit_line, write_audit
    from resnet_cli.similarity.audit import run_audit

    with user_errors():
        check_creatable(output)
        options = ModelOptions(model=model, weights=weights, image_size=image_size,
                               device=device, precision=precision.value)
        features = _feature_options(pooling, layer, resize, batch_size)
        result = run_audit(data_dir, test_dir=test, options=options, features=features,
                           threshold=threshold, copy_bits=copy_bits, folds=folds,
                           progress=not quiet, on_failure=None,
                           runner=ray_runner_for(ray, ray_actors, ray_timeout, options))
        write_audit(result, output)
    make_console().print(audit_line(result, output), markup=False, highlight=False,
                         soft_wrap=True)
