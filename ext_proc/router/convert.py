"""``archway router convert``: a local Hugging Face model directory -> a
CTranslate2 model directory Archway loads.

Two kinds of model, two paths:

- A generator (a downloaded katanemo/Arch-Router-1.5B), ``convert_model``:
  CTranslate2's own converter does the weights; the tokenizer and chat-template
  files are copied beside them so the directory is all the router needs. Needs
  the ``convert`` extra (transformers and torch), at conversion time only.
- A BERT sentence encoder (all-MiniLM-L6-v2 and its kind), ``convert_encoder``
  (``--encoder``): the encoder spec is filled straight from the safetensors with
  numpy, without torch, which a CPU routing box has no other use for (several
  gigabytes for a one-off step). It needs only the ``router`` extra, so a fresh
  machine goes from ``pip install`` to routing in minutes. The output holds
  CTranslate2's ``model.bin``/``config.json``/``vocabulary.json``, the tokenizer
  as ``tokenizer.json``, and ``archway_encoder.json`` (pooling and length).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ext_proc.router.ct2_engine import missing_model_files
from ext_proc.router.tokenizer import ModelFilesError

__all__ = [
    "ENCODER_META",
    "ENCODER_QUANTIZATIONS",
    "QUANTIZATIONS",
    "TOKENIZER_FILES",
    "EncoderMeta",
    "convert_encoder",
    "convert_model",
    "read_safetensors",
]

QUANTIZATIONS = ("int8", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def convert_model(
    source: Path, output: Path, *, quantization: str | None = "int8", force: bool = False
) -> Path:
    """Convert ``source`` into ``output``; returns ``output``.

    ``quantization`` is how the weights are stored (``int8``: a quarter of the
    float32 size, the fastest on CPUs; ``None`` keeps the checkpoint's type).
    """
    if not (source / "config.json").is_file():
        raise ModelFilesError(
            f"{source}: no config.json; point at a Hugging Face model directory "
            "(e.g. a download of katanemo/Arch-Router-1.5B)"
        )
    if not (source / "tokenizer.json").is_file():
        raise ModelFilesError(f"{source}: no tokenizer.json; the router needs the fast tokenizer")
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ModelFilesError(
            f"converting needs {exc.name}: pip install 'archway[convert]'"
        ) from None
    files = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    converter = TransformersConverter(str(source), copy_files=files, low_cpu_mem_usage=True)
    try:
        converter.convert(str(output), quantization=quantization, force=force)
    except ImportError as exc:
        raise ModelFilesError(
            f"converting needs {exc.name}: pip install 'archway[convert]'"
        ) from None
    missing = missing_model_files(output)
    if missing:
        raise ModelFilesError(f"{output}: conversion left out {', '.join(missing)}")
    return output


# --------------------------------------------------------------------------------------
# BERT sentence encoders, without torch
# --------------------------------------------------------------------------------------

ENCODER_META = "archway_encoder.json"
"""Written beside the CTranslate2 model: what the runtime needs that CTranslate2's
own ``config.json`` does not say (pooling, normalisation, maximum length)."""

_ENCODER_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
# sentence-transformers' own settings travel too: they say how the model was
# trained to be pooled, and a reader of the output directory may want them.
_SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
_ACTIVATIONS = {
    "gelu": "GELU",
    "gelu_new": "GELUTanh",
    "gelu_pytorch_tanh": "GELUTanh",
    "gelu_fast": "GELUTanh",
    "relu": "RELU",
}
ENCODER_QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
# Task heads wrap the encoder under a prefix; the encoder's own names follow it.
_PREFIXES = ("", "bert.", "model.")


@dataclass(frozen=True)
class EncoderMeta:
    """The runtime settings stored in ``archway_encoder.json``."""

    max_length: int
    pooling: str = "mean"
    normalize: bool = True
    hidden_size: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "max_length": self.max_length,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "hidden_size": self.hidden_size,
            },
            indent=2,
        )

    @classmethod
    def read(cls, model_dir: Path) -> EncoderMeta | None:
        path = model_dir / ENCODER_META
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            max_length=int(data["max_length"]),
            pooling=str(data.get("pooling", "mean")),
            normalize=bool(data.get("normalize", True)),
            hidden_size=int(data.get("hidden_size", 0)),
        )


# --------------------------------------------------------------------------------------
# Reading safetensors
# --------------------------------------------------------------------------------------


def read_safetensors(source: Path) -> dict[str, np.ndarray]:
    """Every tensor of the model in ``source`` (one file or a sharded index), as
    float32 where it was floating point."""
    single = source / "model.safetensors"
    index = source / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [source / name for name in dict.fromkeys(weight_map.values())]
    else:
        raise ModelFilesError(
            f"{source}: no model.safetensors (or model.safetensors.index.json); "
            "only safetensors checkpoints are read, not pytorch_model.bin"
        )
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        tensors.update(_read_file(path))
    return tensors


def _read_file(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    header = _header(path)
    bf16 = {name for name, info in header.items() if info.get("dtype") == "BF16"}
    with safe_open(str(path), framework="np") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            if name in bf16:
                continue
            array = handle.get_tensor(name)
            if np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32, copy=False)
            yield name, array
    if bf16:
        # numpy has no bfloat16, so safetensors cannot hand these over: a bf16
        # value is the top half of a float32, so widen the raw bits.
        offset = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
        with path.open("rb") as raw:
            for name in bf16:
                info = header[name]
                start, end = info["data_offsets"]
                raw.seek(offset + start)
                bits = np.frombuffer(raw.read(end - start), dtype="<u2").astype(np.uint32)
                yield name, (bits << 16).view(np.float32).reshape(info["shape"])


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as raw:
        (length,) = struct.unpack("<Q", raw.read(8))
        header = json.loads(raw.read(length))
    header.pop("__metadata__", None)
    return header


# --------------------------------------------------------------------------------------
# Filling the spec
# --------------------------------------------------------------------------------------


class _Weights:
    """Tensor look-up by the encoder's own names, whatever prefix a task head added."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._tensors = tensors
        probe = "embeddings.word_embeddings.weight"
        prefix = next((p for p in _PREFIXES if p + probe in tensors), None)
        if prefix is None:
            raise ModelFilesError(
                f"no {probe} among the tensors: this does not look like a BERT encoder"
            )
        self._prefix = prefix

    def __call__(self, name: str) -> np.ndarray:
        try:
            return self._tensors[self._prefix + name]
        except KeyError:
            raise ModelFilesError(f"the checkpoint has no tensor {self._prefix + name}") from None

    def has(self, name: str) -> bool:
        return self._prefix + name in self._tensors


def _linear(spec: Any, weights: _Weights, name: str) -> None:
    # HF Linear stores [out, in]: CTranslate2's layout too, so no transpose.
    spec.weight = weights(f"{name}.weight")
    spec.bias = weights(f"{name}.bias")


def _layer_norm(spec: Any, weights: _Weights, name: str) -> None:
    spec.gamma = weights(f"{name}.weight")
    spec.beta = weights(f"{name}.bias")


def _build_spec(config: Mapping[str, Any], weights: _Weights) -> Any:
    from ctranslate2.specs import common_spec, transformer_spec

    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ModelFilesError(
            f"position_embedding_type {position_type!r} is not supported; only absolute"
        )
    act_name = config.get("hidden_act", "gelu")
    if act_name not in _ACTIVATIONS:
        raise ModelFilesError(
            f"hidden_act {act_name!r} is not supported; one of {', '.join(_ACTIVATIONS)}"
        )
    layers = int(config["num_hidden_layers"])
    encoder = transformer_spec.TransformerEncoderSpec(
        layers,
        int(config["num_attention_heads"]),
        # BERT normalises after each residual (post-norm) and once after the
        # summed embeddings.
        pre_norm=False,
        activation=getattr(common_spec.Activation, _ACTIVATIONS[act_name]),
        layernorm_embedding=True,
        # Word and token-type embeddings are summed, as BERT does.
        num_source_embeddings=2,
        embeddings_merge=common_spec.EmbeddingsMerge.ADD,
    )
    # Sentence embeddings come from the hidden states; the [CLS] pooler head
    # would be dead weight, so the spec leaves it out.
    spec = transformer_spec.TransformerEncoderModelSpec(encoder, pooling_layer=False)
    spec.encoder.scale_embeddings = False

    spec.encoder.embeddings[0].weight = weights("embeddings.word_embeddings.weight")
    if weights.has("embeddings.token_type_embeddings.weight"):
        spec.encoder.embeddings[1].weight = weights("embeddings.token_type_embeddings.weight")
    else:
        # Some distilled checkpoints drop token types; a zero row keeps the sum exact.
        hidden = spec.encoder.embeddings[0].weight.shape[1]
        spec.encoder.embeddings[1].weight = np.zeros((1, hidden), dtype=np.float32)
    spec.encoder.position_encodings.encodings = weights("embeddings.position_embeddings.weight")
    _layer_norm(spec.encoder.layernorm_embedding, weights, "embeddings.LayerNorm")

    for index, layer in enumerate(spec.encoder.layer):
        base = f"encoder.layer.{index}"
        attention = f"{base}.attention"
        # CTranslate2 runs self-attention's Q, K and V as one fused projection.
        layer.self_attention.linear[0].weight = np.concatenate(
            [weights(f"{attention}.self.{p}.weight") for p in ("query", "key", "value")]
        )
        layer.self_attention.linear[0].bias = np.concatenate(
            [weights(f"{attention}.self.{p}.bias") for p in ("query", "key", "value")]
        )
        _linear(layer.self_attention.linear[1], weights, f"{attention}.output.dense")
        _layer_norm(layer.self_attention.layer_norm, weights, f"{attention}.output.LayerNorm")
        _linear(layer.ffn.linear_0, weights, f"{base}.intermediate.dense")
        _linear(layer.ffn.linear_1, weights, f"{base}.output.dense")
        _layer_norm(layer.ffn.layer_norm, weights, f"{base}.output.LayerNorm")
    if weights.has(f"encoder.layer.{layers}.attention.self.query.weight"):
        raise ModelFilesError(f"the checkpoint has more layers than num_hidden_layers={layers}")
    return spec


# --------------------------------------------------------------------------------------
# Tokenizer and vocabulary
# --------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _tokenizer(source: Path) -> Any:
    """The fast tokenizer, from ``tokenizer.json`` or built from ``vocab.txt``."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if (source / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(source / "tokenizer.json"))
    if (source / "vocab.txt").is_file():
        settings = _read_json(source / "tokenizer_config.json")
        lowercase = bool(settings.get("do_lower_case", True))
        wordpiece = BertWordPieceTokenizer(
            str(source / "vocab.txt"),
            lowercase=lowercase,
            strip_accents=settings.get("strip_accents"),
        )
        return wordpiece._tokenizer
    raise ModelFilesError(f"{source}: no tokenizer.json or vocab.txt to tokenize with")


def _vocabulary(tokenizer: Any, size: int) -> list[str]:
    by_id = {index: token for token, index in tokenizer.get_vocab(with_added_tokens=True).items()}
    # CTranslate2 wants one token per embedding row; rows the tokenizer never
    # produces get placeholder names.
    return [by_id.get(index, f"[unused_archway_{index}]") for index in range(size)]


def _max_length(source: Path, config: Mapping[str, Any]) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    trained = _read_json(source / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(trained, int) and 0 < trained <= positions:
        return trained
    return positions


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def convert_encoder(
    source: Path | str,
    output: Path | str,
    *,
    quantization: str | None = None,
    force: bool = False,
) -> Path:
    """Convert the BERT model in ``source`` into a CTranslate2 encoder in ``output``.

    ``quantization`` stores the weights as ``int8``, ``float16``, ...; the
    default keeps float32, and the router can still compute in int8 at load
    time. Raises ``ModelFilesError`` with a reason when the source is unusable.
    """
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise ModelFilesError(f"{source}: not a directory")
    if quantization is not None and quantization not in ENCODER_QUANTIZATIONS:
        raise ModelFilesError(
            f"quantization {quantization!r} is not one of {', '.join(ENCODER_QUANTIZATIONS)}"
        )
    if output.exists() and any(output.iterdir()) and not force:
        raise ModelFilesError(f"{output}: exists and is not empty; pass --force to replace it")
    config = _read_json(source / "config.json")
    if not config:
        raise ModelFilesError(f"{source}: no config.json")
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise ModelFilesError(f"model_type {model_type!r} is not supported; only bert")

    weights = _Weights(read_safetensors(source))
    spec = _build_spec(config, weights)
    tokenizer = _tokenizer(source)
    vocab_size, hidden_size = spec.encoder.embeddings[0].weight.shape
    spec.register_vocabulary(_vocabulary(tokenizer, vocab_size))
    spec.config.unk_token = str(
        _read_json(source / "special_tokens_map.json").get("unk_token", "[UNK]")
    )
    spec.config.layer_norm_epsilon = float(config.get("layer_norm_eps", 1e-12))
    spec.validate()
    spec.optimize(quantization=quantization)

    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    spec.save(str(output))
    for name in (*_ENCODER_TOKENIZER_FILES, *_SENTENCE_TRANSFORMERS_FILES):
        if (source / name).is_file():
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, output / name)
    if not (output / "tokenizer.json").is_file():
        tokenizer.save(str(output / "tokenizer.json"))
    meta = EncoderMeta(
        max_length=_max_length(source, config),
        hidden_size=int(hidden_size),
    )
    (output / ENCODER_META).write_text(meta.to_json() + "\n", encoding="utf-8")
    return output
