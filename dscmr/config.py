"""Experiment configuration: frozen dataclasses loaded from TOML.

A config file has one table per section (``[data]``, ``[model]``, ``[loss]``, ``[train]``, ``[eval]``). Unknown
keys and wrong types are errors that name the key and the file. Overrides (``--set train.lr=3e-4``) go through
:func:`dataclasses.replace`; :meth:`dscmr.train.RunDir.save_config` saves the resolved config next to every
run's outputs.

The generic helpers (:func:`from_dict`, :func:`apply_overrides`, :func:`to_dict`, :func:`load_toml`) work for any
nested frozen dataclass, so other tasks (vision, experiments) define their own config classes and reuse them.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dscmr.errors import ConfigError

T = TypeVar("T")

NORM_CHOICES = ("mean_l2", "frobenius")
ENGINE_CHOICES = ("auto", "torch", "onnx", "onnx-int8")  # dscmr.encoders.engine.ENGINES
IMAGE_FIT_CHOICES = ("crop", "pad", "stretch")  # dscmr.encoders.image.FIT_CHOICES
IMAGE_VIEWS_CHOICES = ("one", "flip", "five", "ten")  # dscmr.encoders.image.VIEW_CHOICES
MULTI_CAPTION_CHOICES = ("off", "joined", "mean")  # dscmr.data.views


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split.

    Attributes:
        format: ``wikipedia`` (raw_features.mat + list files), ``dscmr`` (the DSCMR release .mat layout),
            ``npz`` (generic arrays), ``folder`` (images + captions), a built-in dataset name, or ``features_dir``
            (a features folder written by ``dscmr encode``).
        root: Folder (or .npz file) holding the data. Relative paths are resolved from the working directory.
        text_key: Key prefix of the text features in ``raw_features.mat`` (``T`` -> ``T_tr``/``T_te``).
        image_key: Key prefix of the image features in ``raw_features.mat``.
        img_dim: Expected image-feature dimension; 0 accepts whatever the data has.
        txt_dim: Expected text-feature dimension; 0 accepts whatever the data has.
        num_classes: Expected number of classes; 0 infers it from the labels.
        val_fraction: Fraction of the training split carved out (stratified) for validation.
        val_seed: Seed of the validation split.
        val_as_test: Folder datasets without test records: hold the ``val`` records out as the test split and
            carve validation out of train (``val_fraction``, whole images), so the reported test mAP comes from
            images that no choice (epoch, early stopping) has seen.
        standardize: Standardise each feature with the training split's mean and std (stored in the model).
        skip_bad: Folder datasets: drop bad records (with a count) instead of failing.
        image_size: Folder datasets: input size of the image encoder (0 = the backbone's own: 224 for
            MobileNetV2 and EfficientNet-Lite0, 240 for Lite1, 260 for Lite2).
        image_fit: Folder datasets: how a picture becomes the square input: ``crop`` (shorter side resized, centre
            cropped), ``pad`` (whole picture, longer side resized, padded with the mean colour) or ``stretch``
            (whole picture resized to the square, aspect not kept). Recorded in the feature-cache key.
        image_views: Folder datasets: views whose features are averaged: ``one``, ``flip`` (+ mirror image),
            ``five`` (centre and corner crops of the picture fitted at ``image_size / 0.875``) or ``ten`` (five
            + mirrors). Recorded in the feature-cache key.
        image_backbone: Folder datasets: registered vision model used as the frozen image encoder.
        image_backbone_weights: Folder datasets: fine-tuned backbone weights (``model.safetensors`` of
            ``dscmr vision classify``) instead of the ImageNet ones ("" = ImageNet).
        text_model: Folder datasets: sentence-transformers model name or path ("" = offline all-MiniLM-L6-v2).
        cache_dir: Folder datasets: where cached features go ("" = ~/.cache/dscmr).
        engine: Folder datasets: how the frozen encoders run: ``auto`` (ONNX Runtime when it is installed, else
            torch; trainable encoder tops always run in torch), ``torch``, ``onnx`` or ``onnx-int8`` (see
            docs/onnx.md). The engine that ran is recorded in the feature-cache key.
        captions_file: Folder datasets: the captions file inside the folder ("" = ``captions.jsonl`` or
            ``.csv``; e.g. ``sentences.jsonl``, whose records may list several ``sentences``).
        multi_caption: Folder datasets: ``off`` (one row per record), or one row per image whose text is its
            sentences ``joined`` or the ``mean`` of their embeddings, training on each sentence
            (:mod:`dscmr.data.views`).
        image_train_blocks: Folder datasets: last backbone blocks (plus the head conv) trained with the DSCMR
            losses on cached activations of the frozen part (0 = frozen pooled features).
        image_train_views: Folder datasets: augmented views (random resized crops, flips) cached per training
            image and drawn from during training (0 = the deterministic view only).
        text_train_layers: Folder datasets: last transformer layers of the sentence encoder trained with the DSCMR
            losses on cached token states of the frozen part (0 = frozen sentence vectors; at most the model's
            layer count, 6 for all-MiniLM-L6-v2; needs ``engine`` 'torch' or 'auto').
    """

    format: str = "wikipedia"
    root: str = "../shared/data/wikipedia"
    text_key: str = "T"
    image_key: str = "I"
    img_dim: int = 0
    txt_dim: int = 0
    num_classes: int = 0
    val_fraction: float = 0.1
    val_seed: int = 0
    val_as_test: bool = False
    standardize: bool = False
    skip_bad: bool = False
    image_size: int = 0
    image_fit: str = "crop"
    image_views: str = "one"
    image_backbone: str = "mobilenet_v2_100"
    image_backbone_weights: str = ""
    text_model: str = ""
    cache_dir: str = ""
    engine: str = "auto"
    captions_file: str = ""
    multi_caption: str = "off"
    image_train_blocks: int = 0
    image_train_views: int = 0
    text_train_layers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """DSCMR network shape.

    Attributes:
        img_hidden: Widths of the image subnet's Linear+ReLU layers.
        txt_hidden: Widths of the text subnet's Linear+ReLU layers.
        common_dim: Width of the weight-shared common-space layer.
        dropout: Dropout probability after each subnet layer (0 disables).
        hash_bits: Bits of the optional learned hash layer tanh(W u) on the common space (0 disables).
        center: Subtract a centre (the mean of the epoch's training-batch embeddings) before cosine ranking;
            it is saved with the selected weights and used for validation.
        project_dim: Project the run's embedding (one network's ``common_dim`` or a seed ensemble's
            ``ensemble * common_dim`` concatenation) onto its first ``project_dim`` principal axes, fitted after
            training on the training rows of both modalities, so an index stores ``project_dim`` floats per item
            (0 = no projection; :meth:`dscmr.models.DSCMREnsemble.fit_projection`).
    """

    img_hidden: tuple[int, ...] = (2048,)
    txt_hidden: tuple[int, ...] = (2048,)
    common_dim: int = 1024
    dropout: float = 0.0
    hash_bits: int = 0
    center: bool = True
    project_dim: int = 0


@dataclass(frozen=True)
class LossConfig:
    """DSCMR objective: J1 + alpha * J2 + beta * J3.

    Attributes:
        alpha: Weight of the common-space discrimination loss J2.
        beta: Weight of the modality-invariance loss J3.
        norm: ``mean_l2`` (mean of per-sample L2 norms, the authors' code) or ``frobenius`` (the paper's text).
        hash_weight: Weight of the discrimination loss on the relaxed hash codes (learned hashing only).
        quant_weight: Weight of the quantization loss ||h - sign(h)||^2 (learned hashing only).
    """

    alpha: float = 1e-3
    beta: float = 1e-1
    norm: str = "mean_l2"
    hash_weight: float = 1.0
    quant_weight: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run control.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Mini-batch size.
        lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        patience: Stop after this many epochs without a validation improvement (0 disables early stopping).
        image_top_lr: Adam learning rate of the trainable image top (``data.image_train_blocks``; 0 = ``lr``).
        text_top_lr: Adam learning rate of the trainable text top (``data.text_train_layers``; 0 = ``lr``).
        seed: Seed for python, numpy and torch (weights init and data order).
        threads: torch intra-op threads (0 leaves torch's default).
        checkpoint_every: Save resumable training state every N epochs.
        ensemble: Seed ensemble size N, 1 to 16: N>1 trains N members one after the other (member j with seed
            ``seed + 1000 * j``, each selecting its own epoch on validation) and saves them as one model whose
            embedding concatenates the members' L2-normalised embeddings (:mod:`dscmr.train.ensemble`); 1 = one model.
    """

    epochs: int = 500
    batch_size: int = 100
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    patience: int = 50
    image_top_lr: float = 0.0
    text_top_lr: float = 0.0
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 10
    ensemble: int = 1


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation.

    Attributes:
        k: Cut-off for mAP@k; 0 means mAP@all.
        chunk_size: Queries scored per chunk (bounds memory).
    """

    k: int = 0
    chunk_size: int = 256


@dataclass(frozen=True)
class Config:
    """A complete DSCMR experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.loss.norm not in NORM_CHOICES:
            raise ConfigError(f"loss.norm must be one of {', '.join(NORM_CHOICES)}, got {self.loss.norm!r}")
        if self.data.engine not in ENGINE_CHOICES:
            raise ConfigError(f"data.engine must be one of {', '.join(ENGINE_CHOICES)}, got {self.data.engine!r}")
        if self.data.image_fit not in IMAGE_FIT_CHOICES:
            raise ConfigError(
                f"data.image_fit must be one of {', '.join(IMAGE_FIT_CHOICES)}, got {self.data.image_fit!r}"
            )
        if self.data.image_views not in IMAGE_VIEWS_CHOICES:
            raise ConfigError(
                f"data.image_views must be one of {', '.join(IMAGE_VIEWS_CHOICES)}, got {self.data.image_views!r}"
            )
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if self.data.multi_caption not in MULTI_CAPTION_CHOICES:
            raise ConfigError(
                f"data.multi_caption must be one of {', '.join(MULTI_CAPTION_CHOICES)}, got {self.data.multi_caption!r}"
            )
        if self.data.image_train_blocks < 0 or self.data.image_train_views < 0:
            raise ConfigError("data.image_train_blocks and data.image_train_views must be >= 0")
        if self.data.text_train_layers < 0:
            raise ConfigError(f"data.text_train_layers must be >= 0, got {self.data.text_train_layers}")
        if self.data.text_train_layers and self.data.engine not in ("auto", "torch"):
            raise ConfigError("data.text_train_layers needs data.engine = 'torch' or 'auto'")
        if self.train.text_top_lr < 0:
            raise ConfigError(f"train.text_top_lr must be >= 0 (0 = train.lr), got {self.train.text_top_lr}")
        if self.train.batch_size <= 0 or self.train.epochs <= 0:
            raise ConfigError("train.batch_size and train.epochs must be positive")
        if not 0.0 <= self.model.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.model.dropout}")
        if self.model.hash_bits < 0 or self.model.hash_bits % 8:
            raise ConfigError(f"model.hash_bits must be a multiple of 8 (0 disables), got {self.model.hash_bits}")
        self._check_ensemble()

    def trains_ensemble(self) -> bool:
        """Whether a run trains member networks and saves them as one seed ensemble (:mod:`dscmr.train.ensemble`):
        ``train.ensemble > 1``, or a projection (``model.project_dim > 0``), which a one-member ensemble carries."""
        return self.train.ensemble > 1 or self.model.project_dim > 0

    def _check_ensemble(self) -> None:
        """``train.ensemble`` is 1 to 16, ``model.project_dim`` fits it, and either only with what it supports."""
        n, k = self.train.ensemble, self.model.project_dim
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise ConfigError(f"train.ensemble must be an integer from 1 to 16 (1 = one model), got {n!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"model.project_dim must be an integer >= 0 (0 = no projection), got {k!r}")
        if k > n * self.model.common_dim:
            raise ConfigError(
                f"model.project_dim {k} is wider than the embedding's {n} x {self.model.common_dim} = "
                f"{n * self.model.common_dim} dimensions (train.ensemble x model.common_dim); choose a smaller one"
            )
        what = "train.ensemble > 1" if n > 1 else "model.project_dim > 0"
        undo = "train.ensemble = 1" if n > 1 else "model.project_dim = 0"
        if self.trains_ensemble() and (self.data.image_train_blocks or self.data.text_train_layers):
            raise ConfigError(
                f"{what} does not support trainable encoder tops yet; set data.image_train_blocks = 0 "
                f"and data.text_train_layers = 0, or {undo}"
            )
        if self.trains_ensemble() and self.model.hash_bits:
            raise ConfigError(
                f"{what} has no learned hash layer; set model.hash_bits = 0 (index the run with "
                f"--binary sign or itq) or {undo}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Generic machinery for nested frozen dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return from_dict(typing.cast(type, tp), value, source=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build the dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types.

    Args:
        cls: A (frozen) dataclass type whose fields may be dataclasses themselves.
        data: Parsed TOML/JSON content.
        source: Used in error messages (a file name and section), e.g. ``configs/wiki.toml [train]``.

    Raises:
        ConfigError: Naming the offending key and ``source``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"unknown key {key!r} in {source} (known keys: {known})")
        tp = hints[key]
        where = f"{source}.{key}" if dataclasses.is_dataclass(tp) else f"key {key!r} in {source}"
        if dataclasses.is_dataclass(tp):
            where = f"{source} [{key}]" if "[" not in source else f"{source}.{key}"
        kwargs[key] = _coerce(value, tp, where)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested dict of a dataclass config, with tuples as lists (TOML/JSON friendly)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...] | None) -> T:
    """Apply ``section.key=value`` overrides, then rebuild ``cfg`` once.

    Values are parsed as TOML (``1e-4``, ``true``, ``[1024, 512]``, ``"text"``); a bare word is a string. Every
    override is applied before the config's own cross-field checks run, so their order never matters:
    ``model.common_dim=16`` then ``model.project_dim=64`` gives the same config as the reverse.

    Raises:
        ConfigError: For a malformed override, an unknown key, a wrong type, or a resulting config that fails its
            checks.
    """
    changed: dict[str, Any] = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        path = [p for p in dotted.strip().split(".") if p]
        if not path:
            raise ConfigError(f"override {item!r} has an empty key")
        _override(cfg, changed, path, _parse_value(raw.strip()), item)
    return typing.cast(T, dataclasses.replace(typing.cast(Any, cfg), **changed)) if changed else cfg


def _override(obj: Any, changed: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    """Record in ``changed`` the new value of ``obj``'s field ``path[0]`` (earlier changes in ``changed`` kept)."""
    names = {f.name for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown key {head!r} in override {item!r} (known keys: {', '.join(sorted(names))})")
    hints = typing.get_type_hints(type(obj))
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[head]):
            raise ConfigError(f"override {item!r} names a section; use section.key=value")
        changed[head] = _coerce(value, hints[head], f"override {item!r}")
        return
    child: Any = changed.get(head, getattr(obj, head))
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"override {item!r}: {head!r} is not a section")
    inner: dict[str, Any] = {}
    _override(child, inner, path[1:], value, item)
    changed[head] = dataclasses.replace(typing.cast(Any, child), **inner)


def load_toml(cls: type[T], path: str | Path) -> T:
    """Load a TOML file into the dataclass ``cls``.

    Raises:
        ConfigError: The file is missing, is not valid TOML, or has unknown keys / wrong types.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return from_dict(cls, data, source=str(path))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] | None = None) -> Config:
    """Load a DSCMR experiment config and apply ``--set`` overrides."""
    return apply_overrides(load_toml(Config, path), overrides)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps_toml(cfg: Any) -> str:
    """Serialise a config dataclass (sections of scalars and lists) as TOML."""
    lines: list[str] = []
    top = to_dict(cfg)
    scalars = {k: v for k, v in top.items() if not isinstance(v, dict)}
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for section, body in top.items():
        if not isinstance(body, dict):
            continue
        lines.append("" if lines else "")
        lines.append(f"[{section}]")
        for k, v in body.items():
            if isinstance(v, dict):
                raise TypeError("nested tables deeper than one level are not supported")
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines).lstrip("\n") + "\n"
