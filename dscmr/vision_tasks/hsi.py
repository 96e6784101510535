"""Hyperspectral pixel classification (HybridSN and variants) on Indian Pines or any cube + ground-truth map.

Pipeline (Roy et al., 2019): a stratified split of the labelled pixels (``train_ratio``, seeded); PCA to ``K``
bands fitted on the *training pixels only*; zero-padded ``P x P`` patches around each labelled pixel; training
with Adam and cross-entropy; evaluation on the held-out pixels with overall accuracy (OA), average per-class
accuracy (AA), Cohen's kappa and a per-class table. Percentages are reported on a 0..100 scale.
"""

from __future__ import annotations

import importlib.util
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dscmr.errors import ConfigError, DataError
from dscmr.train.run_dir import RunDir
from dscmr.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dscmr.vision import create_model
from dscmr.vision_tasks.runs import (
    ProgressFn,
    no_progress,
    save_metrics,
    save_weights,
    seed_everything,
    set_threads,
)

INDIAN_PINES_CLASSES = (
    "Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees", "Grass-pasture-mowed",
    "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill", "Soybean-clean", "Wheat", "Woods",
    "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers",
)  # fmt: skip


@dataclass(frozen=True)
class HsiDataConfig:
    """Where the cube comes from and how it becomes patches.

    Attributes:
        cube: ``.npy``/``.mat`` file of the (H, W, bands) cube; "" = Indian Pines shipped with tensorly.
        gt: ``.npy``/``.mat`` ground-truth map (H, W), 0 = unlabelled (required with ``cube``).
        cube_key: Variable name inside a ``.mat`` cube ("" = the only 3-D array).
        gt_key: Variable name inside a ``.mat`` ground truth ("" = the only 2-D array).
        pca_bands: Spectral bands kept by PCA (fitted on the training pixels).
        patch_size: Side of the square patch around each pixel (odd).
        train_ratio: Fraction of each class's labelled pixels used for training.
    """

    cube: str = ""
    gt: str = ""
    cube_key: str = ""
    gt_key: str = ""
    pca_bands: int = 30
    patch_size: int = 25
    train_ratio: float = 0.3


@dataclass(frozen=True)
class HsiModelConfig:
    """Classifier.

    Attributes:
        name: ``hybridsn``, ``hybridsn_dsc`` or ``hybridsn_2d3d``.
        drop_rate: Dropout of the fully connected layers.
    """

    name: str = "hybridsn"
    drop_rate: float = 0.4


@dataclass(frozen=True)
class HsiTrainConfig:
    """Optimisation.

    Attributes:
        epochs: Passes over the training pixels.
        batch_size: Patches per mini-batch.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        seed: Seed of the split, the PCA, the weights init and the data order.
        threads: torch intra-op threads (0 leaves torch's default).
        eval_batch_size: Patches per evaluation batch.
        full_map: Predict every pixel for the classification map; otherwise the map shows the predictions on
            the test pixels and the ground truth of the training pixels (unlabelled pixels black).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 0
    eval_batch_size: int = 256
    full_map: bool = False


@dataclass(frozen=True)
class HsiConfig:
    """A hyperspectral classification run."""

    data: HsiDataConfig = field(default_factory=HsiDataConfig)
    model: HsiModelConfig = field(default_factory=HsiModelConfig)
    train: HsiTrainConfig = field(default_factory=HsiTrainConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.data.train_ratio < 1.0:
            raise ConfigError(f"data.train_ratio must be in (0, 1), got {self.data.train_ratio}")
        if self.data.patch_size < 1 or self.data.patch_size % 2 == 0:
            raise ConfigError(f"data.patch_size must be odd and positive, got {self.data.patch_size}")
        if self.data.pca_bands < 1:
            raise ConfigError(f"data.pca_bands must be positive, got {self.data.pca_bands}")
        if bool(self.data.cube) != bool(self.data.gt):
            raise ConfigError("give both --cube and --gt (or neither, for Indian Pines)")
        if self.train.epochs <= 0 or self.train.batch_size <= 0:
            raise ConfigError("train.epochs and train.batch_size must be positive")


# ----------------------------------------------------------------------------------------------------------
# Loading


def _load_array(path: Path, key: str, ndim: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".mat":
            import scipy.io

            try:
                mat = scipy.io.loadmat(path)
            except NotImplementedError:
                raise DataError(f"{path} is a MATLAB v7.3 file; re-save it with -v7 or as .npy") from None
            arrays = {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
            if key:
                if key not in arrays:
                    raise DataError(f"no variable {key!r} in {path} (it has: {', '.join(arrays)})")
                arr = arrays[key]
            else:
                fits = [k for k, v in arrays.items() if v.ndim == ndim]
                if len(fits) != 1:
                    raise DataError(
                        f"cannot tell which variable of {path} is the {what} ({', '.join(arrays)}); "
                        f"pass --{'cube' if ndim == 3 else 'gt'}-key"
                    )
                arr = arrays[fits[0]]
        else:
            raise DataError(f"{what} must be a .npy or .mat file, got {path.name}")
    except DataError:
        raise
    except Exception as exc:  # corrupt or unreadable file
        raise DataError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if arr.ndim != ndim:
        raise DataError(f"{what} {path} must have {ndim} dimensions, got shape {arr.shape}")
    return np.asarray(arr)


def indian_pines_paths() -> tuple[Path, Path]:
    """Paths of the Indian Pines cube and ground truth shipped inside the installed tensorly package.

    Raises:
        DataError: tensorly is not installed or does not ship the files.
    """
    spec = importlib.util.find_spec("tensorly")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("Indian Pines needs tensorly==0.10.0 installed (pip install tensorly==0.10.0)")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "datasets" / "data"
        cube, gt = folder / "Indian_pines_corrected.npy", folder / "Indian_pines_gt.npy"
        if cube.is_file() and gt.is_file():
            return cube, gt
    raise DataError(
        "tensorly does not ship datasets/data/Indian_pines_corrected.npy; install tensorly==0.10.0 "
        "or pass --cube and --gt"
    )


def load_cube(cfg: HsiDataConfig) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The (H, W, bands) float32 cube, the (H, W) int64 ground truth and the class names.

    Raises:
        DataError: Missing/unreadable files, mismatched shapes, no labelled pixels.
    """
    if cfg.cube:
        cube_path, gt_path = Path(cfg.cube), Path(cfg.gt)
        names: tuple[str, ...] = ()
    else:
        cube_path, gt_path = indian_pines_paths()
        names = INDIAN_PINES_CLASSES
    cube = _load_array(cube_path, cfg.cube_key, 3, "cube").astype(np.float32)
    gt = _load_array(gt_path, cfg.gt_key, 2, "ground truth")
    if gt.shape != cube.shape[:2]:
        raise DataError(f"ground truth shape {gt.shape} does not match the cube's spatial shape {cube.shape[:2]}")
    if not np.issubdtype(gt.dtype, np.integer):
        if not np.all(np.equal(np.mod(gt, 1), 0)):
            raise DataError("ground truth must hold integer class labels (0 = unlabelled)")
    gt = gt.astype(np.int64)
    if (gt < 0).any() or not (gt > 0).any():
        raise DataError("ground truth must hold labels >= 1 for labelled pixels and 0 for the rest")
    if not np.isfinite(cube).all():
        raise DataError(f"cube {cube_path} contains NaN or infinite values")
    classes = np.unique(gt[gt > 0])
    if not names or len(names) != len(classes):
        names = tuple(f"class {c}" for c in classes)
    return cube, gt, names


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


def stratified_split(labels: np.ndarray, train_ratio: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class random split: ``round(ratio * n_c)`` training samples per class (at least one,
    and at least one left for testing when the class has two or more).

    Returns:
        ``(train_idx, test_idx)``, each sorted.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_train = int(round(train_ratio * len(idx)))
        n_train = min(max(n_train, 1), max(len(idx) - 1, 1))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclass
class HsiData:
    """A PCA-reduced, zero-padded cube with the labelled pixels and their split.

    Attributes:
        padded: (H + P - 1, W + P - 1, K) float32 PCA cube, zero-padded.
        coords: (N, 2) row/col of the labelled pixels.
        labels: (N,) class indices 0..C-1.
        train_idx: Indices into ``coords`` of the training pixels.
        test_idx: Indices into ``coords`` of the test pixels.
        class_values: Original ground-truth value of each class index.
        class_names: Name of each class index.
        shape: (H, W) of the scene.
        pca_mean: (bands,) PCA mean.
        pca_components: (K, bands) PCA projection (whitened).
    """

    padded: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    class_values: np.ndarray
    class_names: tuple[str, ...]
    shape: tuple[int, int]
    pca_mean: np.ndarray
    pca_components: np.ndarray
    patch_size: int

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_values)

    def patches(self, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
        """(n, K, P, P) float32 patches centred on the pixels ``(rows, cols)``."""
        p = self.patch_size
        out = np.empty((len(rows), self.padded.shape[2], p, p), dtype=np.float32)
        for j, (r, c) in enumerate(zip(rows, cols, strict=True)):
            out[j] = self.padded[r : r + p, c : c + p].transpose(2, 0, 1)  # (K, P, P)
        return torch.from_numpy(out)

    def labelled_patches(self, idx: np.ndarray) -> torch.Tensor:
        """Patches of the labelled pixels ``idx`` (indices into ``coords``)."""
        return self.patches(self.coords[idx, 0], self.coords[idx, 1])


def prepare_hsi(cube: np.ndarray, gt: np.ndarray, names: tuple[str, ...], cfg: HsiDataConfig, *, seed: int) -> HsiData:
    """Split the labelled pixels, fit PCA on the training pixels, project and pad the cube."""
    from sklearn.decomposition import PCA

    h, w, bands = cube.shape
    if cfg.pca_bands > bands:
        raise ConfigError(f"data.pca_bands={cfg.pca_bands} exceeds the cube's {bands} bands")
    coords = np.argwhere(gt > 0)  # (N, 2)
    class_values, labels = np.unique(gt[coords[:, 0], coords[:, 1]], return_inverse=True)
    train_idx, test_idx = stratified_split(labels, cfg.train_ratio, seed=seed)
    train_pixels = cube[coords[train_idx, 0], coords[train_idx, 1]]  # (n_train, bands)
    if len(train_pixels) < cfg.pca_bands:
        raise DataError(f"only {len(train_pixels)} training pixels for {cfg.pca_bands} PCA bands; lower --pca-bands")
    pca = PCA(n_components=cfg.pca_bands, whiten=True, svd_solver="full", random_state=seed).fit(train_pixels)
    reduced = pca.transform(cube.reshape(-1, bands)).astype(np.float32).reshape(h, w, cfg.pca_bands)
    m = cfg.patch_size // 2
    padded = np.pad(reduced, ((m, m), (m, m), (0, 0)))
    return HsiData(
        padded=padded,
        coords=coords,
        labels=labels.astype(np.int64),
        train_idx=train_idx,
        test_idx=test_idx,
        class_values=class_values,
        class_names=names,
        shape=(h, w),
        pca_mean=pca.mean_.astype(np.float32),
        pca_components=(pca.components_ / np.sqrt(pca.explained_variance_)[:, None]).astype(np.float32),
        patch_size=cfg.patch_size,
    )


# ----------------------------------------------------------------------------------------------------------
# Training and evaluation


@torch.no_grad()
def predict(
    model: nn.Module,
    data: HsiData,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    batch_size: int = 256,
    progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Class indices predicted for the pixels ``(rows, cols)``, in eval mode (deterministic)."""
    model.eval()
    preds = []
    for start in range(0, len(rows), batch_size):
        x = data.patches(rows[start : start + batch_size], cols[start : start + batch_size])
        preds.append(model(x).argmax(dim=1).numpy())
        progress(min(start + batch_size, len(rows)), len(rows), "evaluating")
    return np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """OA, AA, Cohen's kappa (0..100), per-class accuracy and the confusion matrix (rows: true class)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    n = cm.sum()
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(num_classes), where=cm.sum(1) > 0)
    oa = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / float(n) ** 2
    kappa = (oa - pe) / (1 - pe) if pe < 1 else 1.0
    present = cm.sum(1) > 0
    return {
        "oa": 100.0 * float(oa),
        "aa": 100.0 * float(per_class[present].mean()),
        "kappa": 100.0 * float(kappa),
        "per_class_accuracy": (100.0 * per_class).tolist(),
        "confusion": cm,
    }


def build_model(cfg: HsiConfig, num_classes: int) -> nn.Module:
    """The registered HybridSN model named in ``cfg`` sized for the patches."""
    if not cfg.model.name.startswith("hybridsn"):
        raise ConfigError(f"hsi needs a HybridSN model (hybridsn, hybridsn_dsc, hybridsn_2d3d), got {cfg.model.name!r}")
    return create_model(
        cfg.model.name,
        num_classes=num_classes,
        in_bands=cfg.data.pca_bands,
        patch_size=cfg.data.patch_size,
        drop_rate=cfg.model.drop_rate,
    )


def fit(model: nn.Module, data: HsiData, cfg: HsiTrainConfig, *, progress: ProgressFn = no_progress) -> list[float]:
    """Train ``model`` on the training pixels; return the mean loss of each epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y_all = torch.from_numpy(data.labels)
    n = len(data.train_idx)
    steps_per_epoch = -(-n // cfg.batch_size)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = data.train_idx[torch.randperm(n, generator=gen).numpy()]
        total = 0.0
        for step, start in enumerate(range(0, n, cfg.batch_size)):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(data.labelled_patches(idx)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            progress(epoch * steps_per_epoch + step + 1, cfg.epochs * steps_per_epoch, f"epoch {epoch + 1}")
        history.append(total / n)
    return history


def _map_png(labels_map: np.ndarray, num_classes: int) -> bytes:
    """RGB PNG of a (H, W) map of class indices (-1 = unlabelled, black), upscaled x3."""
    import matplotlib
    from PIL import Image

    cmap = matplotlib.colormaps["tab20"].resampled(max(num_classes, 2))
    palette = (np.array([cmap(i)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)
    rgb = np.zeros((*labels_map.shape, 3), dtype=np.uint8)
    mask = labels_map >= 0
    rgb[mask] = palette[labels_map[mask]]
    im = Image.fromarray(rgb, mode="RGB").resize(
        (labels_map.shape[1] * 3, labels_map.shape[0] * 3), Image.Resampling.NEAREST
    )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def run_hsi(cfg: HsiConfig, out_dir: str | Path, *, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Train and evaluate a HybridSN model and write the run folder.

    Files: ``model.safetensors``, ``config.toml``/``config.json``, ``metrics.json`` (OA, AA, kappa, per-class
    table, timings), ``confusion_matrix.csv``/``.json``, ``classification_map.png``, ``pca.npz``.

    Returns:
        The metrics (``oa``, ``aa``, ``kappa`` in 0..100, ``train_seconds``, ``seed``, ``per_class`` ...).
    """
    out_dir = Path(out_dir)
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    cube, gt, names = load_cube(cfg.data)
    data = prepare_hsi(cube, gt, names, cfg.data, seed=cfg.train.seed)
    model = build_model(cfg, data.num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    RunDir(out_dir).save_config(cfg)

    start = time.perf_counter()
    history = fit(model, data, cfg.train, progress=progress)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    test = data.coords[data.test_idx]
    y_pred = predict(model, data, test[:, 0], test[:, 1], batch_size=cfg.train.eval_batch_size, progress=progress)
    eval_seconds = time.perf_counter() - start
    m = classification_metrics(data.labels[data.test_idx], y_pred, data.num_classes)
    n_train = np.bincount(data.labels[data.train_idx], minlength=data.num_classes)
    n_test = np.bincount(data.labels[data.test_idx], minlength=data.num_classes)
    per_class = [
        {
            "class": int(data.class_values[c]),
            "name": data.class_names[c],
            "n_train": int(n_train[c]),
            "n_test": int(n_test[c]),
            "accuracy": m["per_class_accuracy"][c],
        }
        for c in range(data.num_classes)
    ]
    metrics: dict[str, Any] = {
        "oa": m["oa"],
        "aa": m["aa"],
        "kappa": m["kappa"],
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "seed": cfg.train.seed,
        "model": cfg.model.name,
        "n_train": int(len(data.train_idx)),
        "n_test": int(len(data.test_idx)),
        "loss_history": history,
        "per_class": per_class,
    }
    save_weights(model, out_dir)
    save_metrics(metrics, out_dir)
    cm = m["confusion"]
    header = "true\\pred," + ",".join(str(v) for v in data.class_values)
    rows = [f"{v}," + ",".join(str(x) for x in cm[i]) for i, v in enumerate(data.class_values)]
    atomic_write_text(out_dir / "confusion_matrix.csv", "\n".join([header, *rows]) + "\n")
    atomic_write_json(out_dir / "confusion_matrix.json", {"classes": data.class_values.tolist(), "matrix": cm.tolist()})

    labels_map = np.full(data.shape, -1, dtype=np.int64)
    if cfg.train.full_map:
        rr, cc = np.meshgrid(np.arange(data.shape[0]), np.arange(data.shape[1]), indexing="ij")
        labels_map[:] = predict(model, data, rr.ravel(), cc.ravel(), batch_size=cfg.train.eval_batch_size).reshape(
            data.shape
        )
    else:  # test pixels: predicted class; training pixels: their ground-truth class
        tr = data.coords[data.train_idx]
        labels_map[tr[:, 0], tr[:, 1]] = data.labels[data.train_idx]
        labels_map[test[:, 0], test[:, 1]] = y_pred
    png = _map_png(labels_map, data.num_classes)
    atomic_write_bytes(out_dir / "classification_map.png", png)
    buf = io.BytesIO()
    np.savez(buf, mean=data.pca_mean, components=data.pca_components)
    atomic_write_bytes(out_dir / "pca.npz", buf.getvalue())
    return metrics
