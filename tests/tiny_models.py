"""Tiny, randomly initialised real-world models for tests.

Each builder returns `(model, inputs)`: a model built from a small config with
random weights (nothing is downloaded) and a NumPy batch of 2-4 rows it
accepts. Weights are reproducible: every builder calls
`keras.utils.set_random_seed(0)` first. Every builder runs on CPU in about a
second or two.

Where the dropout lives (all of it goes through `keras.layers.Dropout`
instances, none through `keras.random.dropout` or a bare rate in `call`):

* keras_hub `TransformerEncoder` / `TransformerDecoder`: `_self_attention_dropout`,
  `_feedforward_dropout`, plus the attention-probability dropout
  `MultiHeadAttention._dropout_layer` (only called when the MHA's `dropout > 0`;
  with `dropout == 0` MHA takes the fused `ops.dot_product_attention` path).
* BERT / GPT-2 backbones: also `embeddings_dropout`; the BERT classifier adds
  `classifier_dropout` (the `dropout=` of `BertTextClassifier`).
* ViT: `ViTEncoderBlock.dropout`, `MLP.dropout` (one instance called twice),
  `MultiHeadAttention._dropout_layer`, `ViTEncoder.dropout`, and the
  classifier's `output_dropout`.
* EfficientNetB0: stochastic depth `block*_drop` (Dropout with
  `noise_shape=(None, 1, 1, 1)`) and `top_dropout`; MobileNetV3Small: one
  unnamed `Dropout` before the classifier convolution.
"""

import keras
import keras_hub
import numpy as np

SEQ_LEN = 12
VOCAB = 200
IMAGE_SIZE = 32


def _token_inputs(batch=3, seq_len=SEQ_LEN, vocab=VOCAB, segments=False):
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, vocab, size=(batch, seq_len)).astype("int32")
    padding_mask = np.ones((batch, seq_len), dtype="int32")
    padding_mask[1, seq_len - 3 :] = 0  # one padded row
    token_ids[padding_mask == 0] = 0
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if segments:
        segment_ids = np.zeros((batch, seq_len), dtype="int32")
        segment_ids[:, seq_len // 2 :] = 1
        inputs["segment_ids"] = segment_ids
    return inputs


def _image_inputs(batch=2, size=IMAGE_SIZE):
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 255.0, size=(batch, size, size, 3)).astype("float32")


def bert_classifier(head_dropout=0.0, backbone_dropout=0.1):
    """Tiny `BertTextClassifier` (2 layers, hidden 32, 3 classes), no preprocessor.

    `backbone_dropout` is the backbone's inner dropout (embeddings, attention
    probabilities, attention output, feedforward); `head_dropout` is the
    classifier's `classifier_dropout`. Inputs: `token_ids`, `segment_ids`,
    `padding_mask`, int32 arrays of shape (3, 12).
    """
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=backbone_dropout,
        max_sequence_length=SEQ_LEN,
        num_segments=2,
    )
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=head_dropout
    )
    return model, _token_inputs(segments=True)


def gpt2_backbone(dropout=0.1):
    """Tiny `GPT2Backbone` (2 layers, hidden 32) returning (3, 12, 32) features.

    `dropout` covers embeddings, attention probabilities, attention output and
    feedforward. Inputs: `token_ids`, `padding_mask`, int32 arrays (3, 12).
    """
    keras.utils.set_random_seed(0)
    model = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=dropout,
        max_sequence_length=SEQ_LEN,
    )
    return model, _token_inputs()


def vit_classifier(dropout=0.1, head_dropout=0.0):
    """Tiny `ViTImageClassifier` on 32x32 images, patch 8, 2 layers, hidden 32.

    `dropout` is both the backbone's `dropout_rate` (encoder input, MLP and
    block dropout) and its `attention_dropout`; `head_dropout` is the
    classifier's `output_dropout`. Inputs: float32 (2, 32, 32, 3) in [0, 1].
    """
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        dropout_rate=dropout,
        attention_dropout=dropout,
    )
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=head_dropout
    )
    return model, _image_inputs() / 255.0


def transformer_encoder_model(dropout=0.1):
    """Functional model: Input((8, 16)) -> TransformerEncoder -> pooling -> Dense(1).

    The encoder has `intermediate_dim=32`, `num_heads=2` and shares `dropout`
    between attention probabilities, attention output and feedforward.
    Inputs: float32 (4, 8, 16).
    """
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((8, 16))
    x = keras_hub.layers.TransformerEncoder(
        intermediate_dim=32, num_heads=2, dropout=dropout
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs, name="transformer_encoder_model")
    data = np.random.default_rng(0).normal(size=(4, 8, 16)).astype("float32")
    return model, data


def efficientnet_b0():
    """`keras.applications.EfficientNetB0`, random weights, 32x32 input, 10 classes.

    Dropout: stochastic depth (`block*_drop`, rate up to 0.2 * block index /
    blocks) and `top_dropout` (0.2). Inputs: float32 (2, 32, 32, 3) in [0, 255]
    (the model rescales and normalizes them itself).
    """
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(
        weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=10
    )
    return model, _image_inputs()


def mobilenet_v3_small(dropout_rate=0.2):
    """`keras.applications.MobileNetV3Small`, random weights, 32x32 input, 10 classes.

    A single `Dropout(dropout_rate)` sits before the classifier convolution.
    `include_preprocessing=True` (rescaling to [-1, 1] inside the model).
    Inputs: float32 (2, 32, 32, 3) in [0, 255].
    """
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        weights=None,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        classes=10,
        include_preprocessing=True,
        dropout_rate=dropout_rate,
    )
    # With random weights the features collapse to ~1e-11 before the head, so
    # its dropout would change nothing; a random bias on the last feature
    # convolution gives the head something to drop.
    head = model.get_layer("conv_2")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, np.random.default_rng(0).normal(size=bias.shape).astype("float32")])
    return model, _image_inputs()
