"""Generate the Keras model files (.h5 and .keras) and TF ``predict`` goldens of tests/models/test_keras_models.py.

Run in a separate TensorFlow venv (TensorFlow is not a dependency of tvm_gru)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf_keras==2.21.0 h5py numpy
    /tmp/tfenv/bin/python tests/goldens/make_keras_models.py

Writes ``tests/goldens/keras_models/<name>.h5``, ``<name>.keras`` and ``<name>.npz`` (inputs ``x{i}_{case}`` and
``predict`` outputs ``y{j}_{case}``, cases listed in ``cases``). Models are tiny (a few units) so the files stay a
few KB. v1 layers are the tf_keras v1 classes (``TF_USE_LEGACY_KERAS=1``: ``tf.compat.v1.keras.layers.GRU``).
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf_keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

OUT = Path(__file__).resolve().parent / "keras_models"
V1 = tf.compat.v1.keras.layers  # gru_v1.GRU / GRUCell (hard_sigmoid, reset_after=False defaults)
L = keras.layers


def _masked(rng, batch, steps, features, lengths):
    """(B, T, F) float32 with the steps after each length set to 0 (what Masking(0.0) masks)."""
    x = rng.uniform(-1.5, 1.5, (batch, steps, features)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n:] = 0.0
    return x


def kws():
    """Keyword spotter: two v1 GRUs and a softmax head."""
    model = keras.Sequential([L.InputLayer(input_shape=(None, 8)),
                              V1.GRU(6, return_sequences=True, name="gru_a"),
                              V1.GRU(5, name="gru_b"),
                              L.Dense(4, activation="softmax")])
    rng = np.random.default_rng(1)
    cases = {"b1_t10": [rng.standard_normal((1, 10, 8)).astype(np.float32)],
             "b3_t7": [rng.standard_normal((3, 7, 8)).astype(np.float32)]}
    return model, cases


def masked():
    """Masking + backwards reset_after/sigmoid GRU + TimeDistributed(Dense)."""
    model = keras.Sequential([L.InputLayer(input_shape=(None, 3)), L.Masking(0.0),
                              V1.GRU(4, go_backwards=True, reset_after=True, recurrent_activation="sigmoid",
                                     return_sequences=True),
                              L.TimeDistributed(L.Dense(2)), L.Activation("tanh")])
    rng = np.random.default_rng(2)
    cases = {"b3_t6": [_masked(rng, 3, 6, 3, [6, 2, 4])], "b1_t9": [_masked(rng, 1, 9, 3, [5])],
             "b3_t5_unmasked": [rng.standard_normal((3, 5, 3)).astype(np.float32)]}
    return model, cases


def rnn_cell():
    """RNN(GRUCell(relu, implementation=2, dropout)) with return_state: two outputs."""
    x = L.Input((None, 5), name="frames")
    cell = V1.GRUCell(4, activation="relu", implementation=2, dropout=0.3)  # recurrent_dropout would force 1
    seq, state = L.RNN(cell, return_sequences=True, return_state=True)(x)
    y = L.Dense(3)(state)
    model = keras.Model(x, [seq, y])
    rng = np.random.default_rng(3)
    cases = {"b3_t4": [rng.standard_normal((3, 4, 5)).astype(np.float32)],
             "b1_t11": [rng.standard_normal((1, 11, 5)).astype(np.float32)]}
    return model, cases


def bidir():
    """Masking, Bidirectional GRUs with merge modes sum and mul (v2 GRU backward), ave with return_state."""
    x = L.Input((None, 4), name="x")
    h = L.Masking(0.0)(x)
    h = L.Bidirectional(V1.GRU(3, return_sequences=True), merge_mode="sum")(h)
    h = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="mul")(h)
    y, h_fw, h_bw = L.Bidirectional(V1.GRU(2, return_state=True, use_bias=False), merge_mode="ave")(h)
    y = L.Dense(2, activation="softmax")(y)
    model = keras.Model(x, [y, h_fw, h_bw])
    rng = np.random.default_rng(4)
    cases = {"b3_t6": [_masked(rng, 3, 6, 4, [6, 3, 1])], "b1_t8": [_masked(rng, 1, 8, 4, [8])]}
    return model, cases


def bidir_lists():
    """Bidirectional merge_mode None (a list of two outputs) and concat, time_major-free, two outputs."""
    x = L.Input((None, 3), name="x")
    fw, bw = L.Bidirectional(V1.GRU(3, return_sequences=True, reset_after=True), merge_mode=None)(x)
    cat = L.Bidirectional(V1.GRU(2), merge_mode="concat")(L.Concatenate()([fw, bw]))
    model = keras.Model(x, [fw, cat])
    rng = np.random.default_rng(5)
    cases = {"b2_t5": [rng.standard_normal((2, 5, 3)).astype(np.float32)],
             "b1_t3": [rng.standard_normal((1, 3, 3)).astype(np.float32)]}
    return model, cases


def conv():
    """Two inputs: tokens -> Embedding -> Conv1D -> BatchNormalization -> (v2 GRU, Dense) -> Concatenate; a
    static feature vector -> Dense; Concatenate / Add at the head."""
    tokens = L.Input((None,), dtype="int32", name="tokens")
    extra = L.Input((3,), name="extra")
    e = L.Embedding(12, 5)(tokens)
    c = L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")(e)
    c = L.BatchNormalization()(c)
    c = L.SpatialDropout1D(0.2)(c)
    d = L.TimeDistributed(L.Dense(3))(e)
    g = L.GRU(4, return_sequences=True)(L.Concatenate()([c, d]))
    g = L.GRU(3)(L.Conv1D(3, 2, padding="same")(g))
    f = L.Dense(3, activation="relu")(L.GaussianNoise(0.5)(extra))
    y = L.Dense(2, activation="softmax")(L.Dropout(0.5)(L.Add()([g, f])))
    model = keras.Model([tokens, extra], y)
    rng = np.random.default_rng(6)
    cases = {"b2_t7": [rng.integers(0, 12, (2, 7)).astype(np.int32), rng.standard_normal((2, 3)).astype(np.float32)],
             "b1_t12": [rng.integers(0, 12, (1, 12)).astype(np.int32),
                        rng.standard_normal((1, 3)).astype(np.float32)]}
    return model, cases


def shapes():
    """Fixed-length input: Conv1D (valid, strided), Permute, Reshape, GRU, Flatten, Dense."""
    x = L.Input((6, 4), name="x")
    h = L.Conv1D(4, 2, strides=1, padding="valid")(x)  # (5, 4)
    h = L.Permute((2, 1))(h)                             # (4, 5)
    h = L.Reshape((5, 4))(h)
    h = V1.GRU(3, return_sequences=True, activation="linear", recurrent_activation="sigmoid")(h)
    h = L.BatchNormalization(center=False)(h)
    y = L.Dense(2)(L.Flatten()(h))
    model = keras.Model(x, y)
    rng = np.random.default_rng(7)
    cases = {"b2": [rng.standard_normal((2, 6, 4)).astype(np.float32)],
             "b1": [rng.standard_normal((1, 6, 4)).astype(np.float32)]}
    return model, cases


def tokens():
    """Embedding(mask_zero=True) (the mask of padded ids feeds the GRUs); Bidirectional of an RNN(GRUCell) with an
    explicit backward layer (a v2 GRU), merge concat; a GRU whose initial state comes from a second input."""
    ids = L.Input((None,), dtype="int32", name="ids")
    context = L.Input((3,), name="context")
    e = L.Embedding(10, 4, mask_zero=True)(ids)
    forward = L.RNN(V1.GRUCell(3, reset_after=True, recurrent_activation="sigmoid"), return_sequences=True)
    backward = L.GRU(3, return_sequences=True, go_backwards=True, activation="softsign")
    h = L.Bidirectional(forward, backward_layer=backward, merge_mode="concat")(e)
    h = L.Dropout(0.1)(L.Dense(4, activation="elu")(h))
    s0 = L.Dense(2, activation="tanh")(context)
    y = V1.GRU(2, return_sequences=True, zero_output_for_mask=True)(h, initial_state=[s0])
    model = keras.Model([ids, context], y)
    rng = np.random.default_rng(8)
    batch = rng.integers(1, 10, (3, 7)).astype(np.int32)
    batch[1, 4:] = 0
    batch[2, 2:] = 0
    cases = {"b3_t7": [batch, rng.standard_normal((3, 3)).astype(np.float32)],
             "b1_t5": [rng.integers(1, 10, (1, 5)).astype(np.int32), rng.standard_normal((1, 3)).astype(np.float32)]}
    return model, cases


MODELS = {"kws": kws, "masked": masked, "rnn_cell": rnn_cell, "bidir": bidir, "bidir_lists": bidir_lists,
          "conv": conv, "shapes": shapes, "tokens": tokens}


def _randomise(model, rng):
    """Non-trivial weights: uniform(-0.6, 0.6), BatchNormalization statistics away from (0, 1)."""
    for layer in model.layers:
        weights = []
        for w in layer.weights:
            value = rng.uniform(-0.6, 0.6, w.shape)
            if "moving_variance" in w.name:
                value = rng.uniform(0.5, 2.0, w.shape)
            weights.append(value.astype(w.dtype.as_numpy_dtype))
        if weights:
            layer.set_weights(weights)


def main():
    OUT.mkdir(exist_ok=True)
    for index, (name, make) in enumerate(MODELS.items()):
        keras.utils.set_random_seed(index)
        model, cases = make()
        _randomise(model, np.random.default_rng(100 + index))
        model.save(OUT / f"{name}.h5")
        model.save(OUT / f"{name}.keras")
        arrays = {}
        for case, xs in cases.items():
            ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
            ys = ys if isinstance(ys, list) else [ys]
            arrays.update({f"x{i}_{case}": x for i, x in enumerate(xs)})
            arrays.update({f"y{j}_{case}": y for j, y in enumerate(ys)})
        np.savez(OUT / f"{name}.npz", cases=np.array(list(cases)), **arrays)
        sizes = ", ".join(f"{p.suffix} {p.stat().st_size / 1e3:.1f} kB" for p in sorted(OUT.glob(f"{name}.*")))
        print(f"{name}: {sizes}")


if __name__ == "__main__":
    main()
