"""The training engine: compiled train and evaluation steps, and precise BatchNorm statistics,
under any `tf.distribute` strategy (one device, MirroredStrategy, MultiWorkerMirroredStrategy).

Keras 3's `fit` cannot train under MultiWorkerMirroredStrategy: before the first step it
reduces a batch of PerReplica values eagerly, and every step it reduces scalar metrics along
axis 0 (the failure of ray-project/ray#47464). So finetune drives the epochs itself with
TensorFlow's own primitives, the same way for every strategy: `experimental_distribute_dataset`
splits each global batch over the replicas, `strategy.run` runs one step on each, the Keras
optimizer all-reduces the gradients, and `strategy.reduce` sums the scores. The model stays a
compiled Keras model: its optimizer (with mixed precision's loss scaling) is the one checkpoints
save and `--resume` restores.

Precise BatchNorm: while BatchNorm layers train, their moving averages are gathered on augmented
batches while the weights keep changing, so they drift from what the final weights produce
(issue #13: a model at 0.98 training accuracy scored 0.55 on its own training images).
`recompute_batch_norm` replaces them with a plain average over a few dozen un-augmented batches,
computed with the current weights (the "precise BN" of Detectron2's PreciseBN hook and fvcore's
`update_bn_stats`). Every worker computes them on the same batches, so they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PRECISE_BN_BATCHES = 30


@dataclass(frozen=True)
class Scores:
    """Mean loss and (sample-weighted) accuracy over a pass."""

    loss: float
    accuracy: float


def with_weights(dataset: Any) -> Any:
    """A dataset of (x, y, sample weight): weights of 1 where the dataset has none."""
    import tensorflow as tf

    if len(dataset.element_spec) == 3:
        return dataset
    return dataset.map(lambda x, y: (x, y, tf.ones(tf.shape(x)[:1], tf.float32)))


def batch_norm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer of `model`, nested models included, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batch_norm_layers(layer))
    return found


class Engine:
    """Train and evaluate `model` (compiled, built under `strategy`'s scope) by global batches
    of `global_batch` images, split over the strategy's replicas."""

    def __init__(self, model: Any, strategy: Any, *, label_smoothing: float,
                 global_batch: int) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        self.strategy = strategy
        self.global_batch = global_batch
        self._loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing,
                                                          reduction="none")
        if not model.optimizer.built:
            # Optimizer variables are created here, under the strategy: a distributed step
            # cannot create them in its first trace.
            with strategy.scope():
                model.optimizer.build(model.trainable_variables)
        self._train = tf.function(self._train_step)
        self._evaluate: dict[Any, Any] = {}
        self._precise_bn: Any = None

    # ----- training -----------------------------------------------------------------------

    def iterate(self, dataset: Any) -> Any:
        """An iterator of distributed global batches for `train_step`."""
        return iter(self.strategy.experimental_distribute_dataset(with_weights(dataset)))

    def train_step(self, iterator: Any) -> tuple[float, float, float, float]:
        """One step on the next global batch; returns its (loss sum, count, weighted correct,
        weight sum) over all replicas."""
        return tuple(float(v) for v in self._train(iterator))  # type: ignore[return-value]

    def _train_step(self, iterator: Any) -> Any:
        x, y, w = next(iterator)
        sums = self.strategy.run(self._replica_train, args=(x, y, w))
        return [self.strategy.reduce("SUM", s, axis=None) for s in sums]

    def _replica_train(self, x: Any, y: Any, w: Any) -> Any:
        import tensorflow as tf

        model = self.model
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per_image = self._loss(y, probs) * w
            # Each replica's share of the global batch's mean: the optimizer sums the
            # replicas' gradients.
            loss = tf.reduce_sum(per_image) / self.global_batch
            if model.losses:
                loss += tf.add_n(model.losses) / self.strategy.num_replicas_in_sync
            scaled = model.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return _sums(per_image, probs, y, w)

    # ----- evaluation ---------------------------------------------------------------------

    def evaluate(self, dataset: Any) -> Scores:
        """Loss and accuracy of the model in inference mode over all of `dataset`."""
        import tensorflow as tf

        distributed = self.strategy.experimental_distribute_dataset(with_weights(dataset))
        key = id(dataset)
        step = self._evaluate.get(key)
        if step is None:
            def one_batch(batch: Any) -> Any:
                sums = self.strategy.run(self._replica_evaluate, args=batch)
                return [self.strategy.reduce("SUM", s, axis=None) for s in sums]

            # One trace, the short last batch included.
            step = self._evaluate[key] = tf.function(
                one_batch, input_signature=[distributed.element_spec])
        totals = [0.0, 0.0, 0.0, 0.0]
        for batch in distributed:
            for i, value in enumerate(step(batch)):
                totals[i] += float(value)
        return scores_of(totals)

    def _replica_evaluate(self, x: Any, y: Any, w: Any) -> Any:
        probs = self.model(x, training=False)
        return _sums(self._loss(y, probs) * w, probs, y, w)

    # ----- precise BatchNorm ----------------------------------------------------------------

    def recompute_batch_norm(self, dataset: Any, *, bar: Any = None) -> int:
        """Set every BatchNorm layer's moving mean and variance to their average over the
        batches of `dataset` (un-augmented training images), run in training mode with the
        current weights. Returns the number of batches used."""
        import tensorflow as tf

        layers = batch_norm_layers(self.model)
        if not layers:
            return 0
        if self._precise_bn is None:
            sums = [(tf.Variable(tf.zeros_like(layer.moving_mean)),
                     tf.Variable(tf.zeros_like(layer.moving_variance))) for layer in layers]

            def accumulate(x: Any) -> None:
                # With momentum 0 each layer's moving statistics are the batch's own.
                self.model(x, training=True)
                for layer, (mean, variance) in zip(layers, sums, strict=True):
                    mean.assign_add(layer.moving_mean)
                    variance.assign_add(layer.moving_variance)

            self._precise_bn = (tf.function(accumulate), sums)
        accumulate_fn, sums = self._precise_bn
        for mean, variance in sums:
            mean.assign(tf.zeros_like(mean))
            variance.assign(tf.zeros_like(variance))
        momenta = [layer.momentum for layer in layers]
        count = 0
        try:
            for layer in layers:
                layer.momentum = 0.0  # read when the function is traced (the first time)
            for x, _y, _w in with_weights(dataset):
                accumulate_fn(x)
                count += 1
                if bar is not None:
                    bar.update(1)
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
        if count:
            for layer, (mean, variance) in zip(layers, sums, strict=True):
                layer.moving_mean.assign(mean / count)
                layer.moving_variance.assign(variance / count)
        return count


def _sums(per_image: Any, probs: Any, y: Any, w: Any) -> list[Any]:
    import tensorflow as tf

    correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1), tf.argmax(y, axis=-1)), tf.float32)
    return [tf.reduce_sum(per_image), tf.cast(tf.shape(y)[0], tf.float32),
            tf.reduce_sum(correct * w), tf.reduce_sum(w)]


def scores_of(totals: list[float]) -> Scores:
    """Scores from accumulated (loss sum, count, weighted correct, weight sum)."""
    loss_sum, count, correct, weight = totals
    return Scores(loss=loss_sum / count if count else math.nan,
                  accuracy=correct / weight if weight else math.nan)
