"""Training and testing CropNet on one leave-one-subject-out fold (paper sections 3.2, 4.2).

Honest evaluation (docs/method.md section 3): the number of epochs is fixed in ``TrainConfig``
before the run, nothing is chosen on the test subject, and the model evaluated is the one
after the last epoch. ``split_fold`` refuses a fold whose test subject or clips leak into
its training set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mer_utils.data.sample import Sample
from mer_utils.errors import ConfigError, TrainingError
from mer_utils.models import CropNet
from mer_utils.optim import AdamP

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULES = ("cosine", "constant")
# Training-image augmentations (build_transform), each with how reports and model cards name
# it: the paper's four (3.2.1), only its two geometric ones (flip and rotation; the
# synthetic-cpu profile, docs/tuning.md section 9), none.
AUGMENTATION_TEXT = {"paper": "the paper's four augmentations", "geometric": "the paper's flip and rotation only",
                     "none": "no augmentation"}
AUGMENTATIONS = tuple(AUGMENTATION_TEXT)
# On CUDA the paper's augmentation of a 320 px batch of 16 in the training process (84 ms on an
# H200 machine) outlasted the GPU step (55 ms): 6 loader processes made a full-gpu fold 1.7x as
# fast there (docs/gpu.md). A fixed number, not one per core, so that the
# augmentation's random streams, and the results, do not depend on the machine.
CUDA_LOADER_WORKERS = 6
RECALIBRATION_CHUNK = 64  # samples per forward pass when BatchNorm statistics are recalibrated


@dataclass
class TrainConfig:
    """Hyper-parameters of one fold. The paper gives none of epochs, batch size, learning
    rate or smoothing; these defaults are ours and are fixed before any run."""

    epochs: int = 30  # fixed number of epochs; the model after the last one is evaluated
    batch_size: int = 16  # training batch (each sample is 10 backbone images with CGPO)
    lr: float = 1e-3  # AdamP peak learning rate of the backbone and head Conv (weights that feed a BatchNorm)
    fc_lr: float = 1e-4  # AdamP peak learning rate of CropNet.fc_parameters(): head FC, p_i, final FC
    weight_decay: float = 1e-2  # AdamP decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing (Lukasik et al. 2020)
    schedule: str = "cosine"  # "cosine": per-step cosine from lr to 0 over all epochs; "constant"
    warmup_epochs: int = 1  # linear warm-up of the learning rate from 0 over these first epochs, then the schedule
    image_size: int = 320  # side the preprocessed images are resized to (the paper's 320)
    cgpo: bool = True  # False: the Table 4 ablation without CGPO
    grid: int = 3  # CGPO tiles per side
    alpha: float = 0.3  # CGPO overlap factor
    backbone: str = "rexnet_100"  # timm feature extractor
    head_channels: int = 1536  # CropNet head Conv channels (with embed_dim: 7.53 M parameters, paper ~7.6 M)
    embed_dim: int = 1280  # size of each z_i and position embedding p_i
    augmentation: str = "paper"  # training images: "paper" (its four, 3.2.1), "geometric" (flip, rotation), "none"
    ensemble: int = 1  # networks per fold (seeds seed, seed + 1, ...), softmax averaged; 1: the paper's one network
    seed: int = 0  # seeds torch, numpy, random, model init, shuffling and augmentation
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # mixed precision on CUDA (bfloat16, or float16 with GradScaler); CPU is float32
    channels_last: bool | None = None  # channels-last memory format; None: on CPU yes (oneDNN is faster), on CUDA no
    num_workers: int | None = None  # DataLoader processes; None: 0 on CPU, CUDA_LOADER_WORKERS on CUDA
    pretrained_weights: str | None = None  # "imagenet" (timm's weights), a local weights file, or None = from scratch
    classes: tuple[str, ...] | None = None  # class names in protocol order; None = sorted labels
    max_threads: int | None = None  # torch CPU threads during the fold; None = leave as is
    progress: bool = True  # tqdm bar over epochs (loss, samples/s)
    recalibrate_bn: bool = True  # after the last epoch, BatchNorm statistics from the un-augmented training images

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError(f"TrainConfig: warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"TrainConfig: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig: schedule {self.schedule!r} is not one of {SCHEDULES}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 1:
            raise ConfigError(f"TrainConfig: ensemble must be a whole number >= 1, got {self.ensemble!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"TrainConfig: augmentation {self.augmentation!r} is not one of {AUGMENTATIONS}")
        if not (self.lr > 0 and self.fc_lr > 0):
            raise ConfigError(f"TrainConfig: lr and fc_lr must be positive, got {self.lr}, {self.fc_lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"TrainConfig: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                                             or self.num_workers < 0):
            raise ConfigError(f"TrainConfig: num_workers must be None or a whole number >= 0, got {self.num_workers!r}")
        if self.classes is not None:
            self.classes = tuple(self.classes)

    def loader_workers(self, device: torch.device) -> int:
        """DataLoader processes on ``device``: ``num_workers``, or by default 0 on CPU (the
        augmentation is a small share of a CPU step) and CUDA_LOADER_WORKERS on CUDA. None in
        a daemonic process, which may not start any: a ``dask worker`` started without
        ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (README, "Running LOSO on a Dask cluster") runs its
        folds' augmentation in the training process, with a warning."""
        workers = self.num_workers if self.num_workers is not None else (
            CUDA_LOADER_WORKERS if device.type == "cuda" else 0)
        if workers and multiprocessing.current_process().daemon:
            warnings.warn(f"this process is daemonic and may not start the {workers} DataLoader processes asked for: "
                          "the training process augments the batches itself (slower; for a dask worker, start it with "
                          "DASK_DISTRIBUTED__WORKER__DAEMON=False)", UserWarning, stacklevel=2)
            return 0
        return workers

    def uses_channels_last(self, device: torch.device) -> bool:
        """Memory format on ``device``: ``channels_last``, or by default channels-last on CPU
        (oneDNN's convolutions are faster that way) and contiguous on CUDA, where cuDNN builds
        its channels-last bfloat16 kernels anew for each new batch shape (about 12 s each on
        an H200, some 35 s a fold) and ran no faster once built (docs/gpu.md)."""
        return device.type != "cuda" if self.channels_last is None else bool(self.channels_last)


@dataclass
class FoldResult:
    """Predictions of one LOSO fold and how they were obtained."""

    test_subject: str
    keys: list[str]
    datasets: list[str]
    subjects: list[str]  # subject_id of each test sample
    clips: list[str]
    y_true: list[str]
    y_pred: list[str]
    probs: np.ndarray  # (N, C) softmax probabilities, columns in ``classes`` order
    classes: tuple[str, ...]
    epoch_losses: list[float]  # mean training loss of each epoch
    wall_time_s: float
    device: str  # "cpu" or "cuda"
    amp: bool
    channels_last: bool
    pretrained: bool  # False: the backbone was trained from scratch
    n_train: int
    config: dict = field(default_factory=dict)
    gpu_peak_memory_mib: float | None = None  # CUDA: peak memory torch allocated during the fold; CPU: None
    seconds: dict = field(default_factory=dict)  # wall seconds: "epochs" (a list), "recalibrate", "predict"
    member_losses: list[list[float]] = field(default_factory=list)  # ensemble: each member's epoch losses
    processor: str = ""  # processor_name(device): the GPU, or the CPU and its instruction set

    def to_frame(self) -> pd.DataFrame:
        """The predictions table: dataset, subject, clip, true_label, pred_label, prob_<class>..."""
        frame = pd.DataFrame(
            {
                "dataset": self.datasets,
                "subject": self.subjects,
                "clip": self.clips,
                "true_label": self.y_true,
                "pred_label": self.y_pred,
            }
        )
        for index, name in enumerate(self.classes):
            frame[f"prob_{name}"] = self.probs[:, index]
        return frame


def split_fold(samples: Sequence[Sample], test_subject: str) -> tuple[list[Sample], list[Sample]]:
    """Training samples (every other subject) and test samples (``test_subject``'s).

    Raises ConfigError when the test subject has no samples, or when a test clip or the test
    subject's on-disk (dataset, subject) also appears in the training set (duplicated keys
    or inconsistent subject ids would leak the test subject into training).
    """
    test = [s for s in samples if s.subject_id == test_subject]
    train = [s for s in samples if s.subject_id != test_subject]
    if not test:
        known = sorted({s.subject_id for s in samples})
        raise ConfigError(
            f"test subject {test_subject!r} has no samples; subjects present: "
            f"{', '.join(known[:10])}{' ...' if len(known) > 10 else ''}"
        )
    if not train:
        raise ConfigError(f"fold {test_subject!r}: no training samples from any other subject")
    leaked_keys = {s.key for s in test} & {s.key for s in train}
    test_people = {(s.dataset, s.subject) for s in test}
    leaked_people = sorted({s.key for s in train if (s.dataset, s.subject) in test_people})
    if leaked_keys or leaked_people:
        raise ConfigError(
            f"fold {test_subject!r} leaks the test subject into training: "
            f"{', '.join(sorted(leaked_keys | set(leaked_people))[:5])}"
        )
    return train, test


class _ImageSet(Dataset):
    """Preprocessed images as uint8 tensors, transformed on the fly; labels as class indices."""

    def __init__(self, images: list[torch.Tensor], labels: list[int], transform: nn.Module) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.labels[index]


def build_transform(image_size: int, augmentation: str = "none") -> v2.Compose:
    """Resize to the network's input, then the training augmentation (in this order), then
    ImageNet normalisation. Resizing first augments the pixels the network sees (and costs a
    quarter of augmenting a 128 px image when the input is 64 px).

    ``augmentation`` "paper" is paper 3.2.1's four, in its order: (1) brightness, contrast,
    saturation in [0.2, 1.8], hue in [-0.5, 0.5]; (2) grayscale with p = 0.2; (3) horizontal
    flip with p = 0.5; (4) rotation in [-15, 15] degrees. "geometric" keeps (3) and (4) only;
    "none" (test images) only resizes and normalises.
    """
    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation {augmentation!r} is not one of {AUGMENTATIONS}")
    steps: list[nn.Module] = [v2.Resize((image_size, image_size), antialias=True)]
    if augmentation == "paper":
        steps += [
            v2.ColorJitter(brightness=(0.2, 1.8), contrast=(0.2, 1.8), saturation=(0.2, 1.8), hue=(-0.5, 0.5)),
            v2.RandomGrayscale(p=0.2),
        ]
    if augmentation in ("paper", "geometric"):
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomRotation(15)]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return v2.Compose(steps)


def network_input(image: np.ndarray, image_size: int) -> np.ndarray:
    """A preprocessed (H, W, 3) uint8 image as CropNet sees it at test time, before the
    normalisation: resized to ``image_size`` by :func:`build_transform`'s antialiased resize.
    CGPO tiles this image, so figures of the tiles (notebooks 02 and 08) draw them on it."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    resized = v2.Resize((image_size, image_size), antialias=True)(tensor)
    return resized.permute(1, 2, 0).contiguous().numpy()


def loader_start_method(workers: int) -> str | None:
    """How the loader processes start: "fork" on Linux, else the platform's default (None).

    A Dask worker makes "spawn" its processes' default, and a spawned loader process imports
    torch and the kit again before its first batch: about 10 s more per fold on this kit's
    2-core CPU (the same losses and predictions either way: each loader process's random
    stream comes from the loader's seeded generator). Forking is safe here because the
    loader processes only augment CPU tensors and never touch CUDA; it is PyTorch's own
    default on Linux outside Dask.
    """
    return "fork" if workers > 0 and sys.platform.startswith("linux") else None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"TrainConfig.device {name!r} is not a device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device {name!r}: CUDA is not available on this machine")
    return device


def _as_tensors(samples: list[Sample], images: Mapping[str, np.ndarray], size: int | None = None) -> list[torch.Tensor]:
    """The samples' images as (3, H, W) uint8 tensors, resized once to ``size`` (the same
    antialiased resize as ``build_transform``'s first step, which then has nothing to do)."""
    tensors = []
    for sample in samples:
        if sample.key not in images:
            raise ConfigError(f"{sample.key}: no preprocessed image given for this clip")
        array = np.asarray(images[sample.key])
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ConfigError(
                f"{sample.key}: expected an (H, W, 3) uint8 RGB image, got {array.shape} {array.dtype}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        if size is not None and tuple(tensor.shape[1:]) != (size, size):
            tensor = v2.functional.resize(tensor, [size, size], antialias=True)
        tensors.append(tensor)
    return tensors


def _labels(samples: list[Sample], classes: tuple[str, ...]) -> list[int]:
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for sample in samples:
        if sample.label not in index:
            raise ConfigError(f"{sample.key}: label {sample.label!r} is not one of the classes {classes}")
        labels.append(index[sample.label])
    return labels


def processor_name(device: torch.device | str) -> str:
    """The processor that computes on ``device``, as fold records and model cards name it:
    the GPU's name on CUDA ("NVIDIA H200"); on the CPU its model and the instruction set
    PyTorch's kernels use ("Intel(R) Xeon(R) Processor, AVX512"), with oneDNN's or MKL's
    limit where one is set in the environment. The CPU path gives the same digits run after
    run on one kind of processor, but not on another: oneDNN, MKL and PyTorch pick their
    kernels by the instruction set, and they round differently (README, "Reproducibility")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    parts = [name, torch.backends.cpu.get_cpu_capability()]
    parts += [f"{var}={os.environ[var]}" for var in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR") if os.environ.get(var)]
    return ", ".join(parts)


def _native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bfloat16 natively (compute capability 8.0 on); older
    ones (V100, T4) only emulate it, so training takes float16 with a gradient scaler there."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


@contextlib.contextmanager
def _reproducible(seed: int, device: torch.device, max_threads: int | None):
    """Seed every generator; deterministic kernels on CPU; restore the global switches afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    threads = torch.get_num_threads()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # NaN-filling every torch.empty costs ~10 % of a CPU step and changes no result here
        torch.utils.deterministic.fill_uninitialized_memory = False
    if max_threads is not None:
        torch.set_num_threads(max_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.set_num_threads(threads)


def train_fold(
    samples: Sequence[Sample], test_subject: str, config: TrainConfig, images: Mapping[str, np.ndarray],
    on_epoch: Callable[[int, float], None] | None = None,
) -> FoldResult:
    """Train CropNet on every subject but ``test_subject`` and predict that subject's samples.

    ``images`` maps ``sample.key`` to its preprocessed (H, W, 3) uint8 RGB image (ARS, RRS or
    flow). Loss: label-smoothing cross-entropy; optimiser: AdamP; ``config.epochs`` epochs,
    no early stopping; the evaluated model is the one after the last epoch. ``on_epoch(done,
    loss)`` is called after each epoch, ``done`` counting the epochs of every network so far
    (up to ``config.epochs * config.ensemble``).
    """
    started = time.perf_counter()
    train, test = split_fold(samples, test_subject)
    _check_trainable(list(train) + list(test))
    _check_batches(len(train), config, f"fold {test_subject}")
    classes = config.classes or tuple(sorted({s.label for s in samples}))
    device = _resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.init()  # with an index ("cuda:1") nothing else has initialised CUDA in a new process yet
        torch.cuda.reset_peak_memory_stats(device)

    with _reproducible(config.seed, device, config.max_threads):
        test_images = _as_tensors(test, images, config.image_size)
        test_labels = _labels(test, classes)
        fitted = _fit(train, classes, config, images, device, desc=f"fold {test_subject}", on_epoch=on_epoch)
        predicting = time.perf_counter()
        probs = _predict(fitted.model, test_images, config, device, fitted.autocast)
        seconds = {**fitted.seconds, "predict": round(time.perf_counter() - predicting, 3)}

    predicted = probs.argmax(axis=1)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    return FoldResult(
        test_subject=test_subject,
        keys=[s.key for s in test],
        datasets=[s.dataset for s in test],
        subjects=[s.subject_id for s in test],
        clips=[s.clip for s in test],
        y_true=[classes[i] for i in test_labels],
        y_pred=[classes[i] for i in predicted],
        probs=probs,
        classes=classes,
        epoch_losses=fitted.epoch_losses,
        wall_time_s=time.perf_counter() - started,
        device=device.type,
        amp=fitted.amp,
        channels_last=fitted.channels_last,
        pretrained=fitted.model.pretrained,
        n_train=fitted.n_train,
        config=_config_record(config, classes, fitted),
        gpu_peak_memory_mib=peak,
        seconds=seconds,
        member_losses=fitted.member_losses,
        processor=processor_name(device),
    )


def _config_record(config: TrainConfig, classes: tuple[str, ...], fitted: "TrainedModel") -> dict:
    return {**dataclasses.asdict(config), "classes": list(classes),
            "pretrained_weights": None if config.pretrained_weights is None else str(config.pretrained_weights),
            "amp_dtype": fitted.precision,
            "num_workers": fitted.loader_workers, "channels_last": fitted.channels_last}


@dataclass
class TrainedModel:
    """A CropNet trained by ``train_model`` (or inside ``train_fold``) and how."""

    model: CropNet
    classes: tuple[str, ...]
    epoch_losses: list[float]
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    n_train: int
    seconds: dict = field(default_factory=dict)  # "epochs": each epoch's wall seconds; "recalibrate"
    member_losses: list[list[float]] = field(default_factory=list)  # ensemble: each member's epoch losses
    loader_workers: int = 0  # DataLoader processes that augmented the batches (TrainConfig.loader_workers)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    @property
    def precision(self) -> str:
        """The arithmetic it was trained in: "float32", or on CUDA "bfloat16" ("float16" where
        bfloat16 is only emulated)."""
        return str(self.amp_dtype).removeprefix("torch.") if self.amp else "float32"


def _check_trainable(samples: Sequence[Sample]) -> None:
    for sample in samples:
        if sample.label is None:
            raise ConfigError(f"{sample.key}: no label (apply a protocol before training)")


def _check_batches(n_train: int, config: TrainConfig, where: str) -> None:
    """A training set the loop can take batches of: two clips at least (an epoch leaves out a
    last batch of one, ``_train``), and without CGPO a batch of two images."""
    if n_train < 2:
        raise ConfigError(f"{where}: {n_train} training clip{'' if n_train == 1 else 's'}; training needs 2 or "
                          "more (an epoch leaves out a last batch of one clip)")
    if not config.cgpo and config.batch_size < 2:
        raise ConfigError("without CGPO a training batch needs >= 2 images (ReXNet's SE blocks use BatchNorm)")


def _fit(train: Sequence[Sample], classes: tuple[str, ...], config: TrainConfig, images: Mapping[str, np.ndarray],
         device: torch.device, desc: str, on_epoch: Callable[[int, float], None] | None = None) -> TrainedModel:
    """One CropNet (``_fit_one``), or ``config.ensemble`` of them as a ``SeedEnsemble``: member
    k is trained exactly as a single run with seed ``config.seed + k`` (its own seeding,
    initialisation, shuffling and augmentation). Epoch losses are the members' means, seconds
    their sums; call inside ``_reproducible``."""
    if config.ensemble == 1:
        return _fit_one(train, classes, config, images, device, desc, on_epoch)
    from mer_utils.models.ensemble import SeedEnsemble

    members = []
    for k in range(config.ensemble):
        member = dataclasses.replace(config, seed=config.seed + k, ensemble=1)
        counted = None if on_epoch is None else (lambda done, loss, before=k * config.epochs: on_epoch(before + done, loss))
        with _reproducible(member.seed, device, config.max_threads):
            members.append(_fit_one(train, classes, member, images, device,
                                    desc=f"{desc}, network {k + 1}/{config.ensemble}", on_epoch=counted))
    first = members[0]
    seconds = {"epochs": [round(sum(column), 3) for column in zip(*(m.seconds["epochs"] for m in members))]}
    if "recalibrate" in first.seconds:
        seconds["recalibrate"] = round(sum(m.seconds["recalibrate"] for m in members), 3)
    losses = [float(np.mean(column)) for column in zip(*(m.epoch_losses for m in members))]
    return TrainedModel(SeedEnsemble([m.model for m in members]), classes, losses, device, first.amp, first.amp_dtype,
                        first.channels_last, first.n_train, seconds,
                        member_losses=[[float(x) for x in m.epoch_losses] for m in members],
                        loader_workers=first.loader_workers)


def _fit_one(train: Sequence[Sample], classes: tuple[str, ...], config: TrainConfig,
             images: Mapping[str, np.ndarray], device: torch.device, desc: str,
             on_epoch: Callable[[int, float], None] | None = None) -> TrainedModel:
    """Build CropNet and run the one training loop (``_train``) on ``train``; call inside ``_reproducible``."""
    on_cuda = device.type == "cuda"
    amp = config.amp and on_cuda
    amp_dtype = torch.bfloat16 if amp and _native_bf16(device) else torch.float16
    train = list(train)
    train_set = _ImageSet(
        _as_tensors(train, images, config.image_size), _labels(train, classes),
        build_transform(config.image_size, config.augmentation)
    )
    model = build_model(config, len(classes)).to(device)
    channels_last = config.uses_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    fitted = TrainedModel(model, classes, [], device, amp, amp_dtype, channels_last, len(train),
                          loader_workers=config.loader_workers(device))
    fitted.epoch_losses, fitted.seconds["epochs"] = _train(model, train_set, config, device, fitted.autocast,
                                                           use_scaler=amp and amp_dtype == torch.float16, desc=desc,
                                                           workers=fitted.loader_workers, on_epoch=on_epoch)
    if config.recalibrate_bn:
        started = time.perf_counter()
        recalibrate_batchnorm(model, train_set.images, config, device, fitted.autocast)
        fitted.seconds["recalibrate"] = round(time.perf_counter() - started, 3)
    return fitted


@torch.no_grad()
def recalibrate_batchnorm(model: CropNet, images: list[torch.Tensor], config: TrainConfig, device: torch.device,
                          autocast) -> None:
    """Replace every BatchNorm's running mean and variance by their exact averages over
    ``images`` (un-augmented, as at test time) under the final weights ("precise BN").

    During training the running statistics are exponential averages (momentum 0.1) over
    the augmented batches of the last ~10 steps, taken while the weights still moved; a
    model trained from scratch for a few epochs then tests with statistics that no longer
    match its weights. A forward pass over the training images in training mode, in chunks
    of ``RECALIBRATION_CHUNK`` samples averaged with equal weight, gives the statistics of
    the final model; a training set of one chunk (every CASME II fold of the synthetic demo)
    gets each layer's exact statistics under the layers before it. Training images only:
    nothing of the test subject is used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not images:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the pass
    model.eval()  # dropout off; only the BatchNorms normalise by (and record) their batch's statistics
    for norm in norms:
        norm.train()
    try:
        for batch in _test_batches(images, config, max(config.batch_size, RECALIBRATION_CHUNK), device):
            if len(batch) < 2 and not config.cgpo:
                continue  # BatchNorm in training mode needs two values per channel
            with autocast():
                model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()


def build_model(config: TrainConfig, num_classes: int) -> CropNet:
    """The CropNet that ``config`` describes (untrained)."""
    return CropNet(
        num_classes=num_classes,
        backbone=config.backbone,
        cgpo=config.cgpo,
        image_size=config.image_size,
        grid=config.grid,
        alpha=config.alpha,
        head_channels=config.head_channels,
        embed_dim=config.embed_dim,
        pretrained_weights=config.pretrained_weights,
    )


def train_model(samples: Sequence[Sample], config: TrainConfig, images: Mapping[str, np.ndarray],
                desc: str = "all samples") -> TrainedModel:
    """Train CropNet on every one of ``samples`` (no held-out subject): the same loop, seeding
    and fixed number of epochs as ``train_fold``; the model after the last epoch is returned."""
    samples = list(samples)
    if not samples:
        raise ConfigError("train_model: no samples to train on")
    _check_trainable(samples)
    _check_batches(len(samples), config, desc)
    classes = config.classes or tuple(sorted({s.label for s in samples}))
    device = _resolve_device(config.device)
    with _reproducible(config.seed, device, config.max_threads):
        fitted = _fit(samples, classes, config, images, device, desc=desc)
    fitted.model.eval()
    return fitted


def predict_probs(model: CropNet, images: Sequence[np.ndarray], config: TrainConfig,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Softmax probabilities (N, C) of ``model`` on (H, W, 3) uint8 RGB images, un-augmented,
    resized to ``config.image_size`` and normalised exactly as in training; on ``device``,
    by default the one the model's weights are on."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    tensors = [torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8))).permute(2, 0, 1).contiguous()
               for image in images]
    if not tensors:
        return np.zeros((0, model.num_classes))
    return _predict(model, tensors, config, device, contextlib.nullcontext)


def _train(model: CropNet, train_set: _ImageSet, config: TrainConfig, device: torch.device, autocast,
           use_scaler: bool, desc: str, workers: int = 0, on_epoch: Callable[[int, float], None] | None = None
           ) -> tuple[list[float], list[float]]:
    """``config.epochs`` epochs of AdamP on label-smoothing cross-entropy, the batches augmented
    by ``workers`` loader processes; returns each epoch's mean loss and wall seconds (the first
    includes starting the loader processes). ``on_epoch(epochs done, mean loss)`` is called
    after each epoch."""
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        # every sample every epoch; only a last batch of one image is dropped (BatchNorm needs two)
        drop_last=len(train_set) % config.batch_size == 1,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context=loader_start_method(workers),
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    fc = model.fc_parameters()
    fc_ids = {id(p) for p in fc}
    groups = [{"params": [p for p in model.parameters() if id(p) not in fc_ids]}, {"params": fc, "lr": config.fc_lr}]
    optimizer = AdamP(groups, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(loader)
    warmup = min(config.warmup_epochs * len(loader), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup:  # linear warm-up, first step at lr / warmup
            return (step + 1) / warmup
        if config.schedule == "cosine":  # per step, from lr down to 0 at the end of the last epoch
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total_steps - warmup)))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    from tqdm.auto import tqdm  # here, not at import: its warnings (no ipywidgets) then reach a notebook after open_run

    bar = tqdm(range(config.epochs), desc=desc, disable=not config.progress, leave=False)
    for epoch in bar:
        model.train()
        epoch_start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for batch, labels in loader:
            batch = batch.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                loss = criterion(model(batch), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        epoch_losses.append(loss_sum / seen)
        if not math.isfinite(epoch_losses[-1]) and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TrainingError(f"{desc}: training diverged in epoch {epoch + 1}: the loss is {epoch_losses[-1]} and "
                                f"the weights are no longer finite; lower lr ({config.lr:g}) or fc_lr ({config.fc_lr:g})")
        elapsed = time.perf_counter() - epoch_start
        epoch_seconds.append(round(elapsed, 3))
        rate = seen / elapsed
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}", samples_per_s=f"{rate:.1f}")
        log.info("%s epoch %d/%d loss %.4f %.1f samples/s", desc, epoch + 1, config.epochs, epoch_losses[-1], rate)
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_losses[-1])
    return epoch_losses, epoch_seconds


@torch.inference_mode()
def _predict(model: CropNet, images: list[torch.Tensor], config: TrainConfig, device: torch.device, autocast) -> np.ndarray:
    """Softmax probabilities (N, C) for the un-augmented test images."""
    model.eval()
    outputs = []
    for batch in _test_batches(images, config, config.batch_size, device):
        with autocast():
            logits = model(batch)
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    probs = torch.cat(outputs).numpy().astype(np.float64)
    bad = int((~np.isfinite(probs).all(axis=1)).sum())
    if bad:
        raise TrainingError(f"CropNet gives no finite probabilities for {bad} of {len(probs)} image(s): its weights "
                            "are not finite (did its training diverge? lower the learning rates)")
    return probs


def _test_batches(images: Sequence[torch.Tensor], config: TrainConfig, size: int, device: torch.device):
    """``images`` as un-augmented, normalised batches of ``size`` on ``device`` (as at test time)."""
    transform = build_transform(config.image_size)
    for start in range(0, len(images), size):
        yield torch.stack([transform(image) for image in images[start:start + size]]).to(device)
