"""The experiment configuration: everything that decides a LOSO experiment's results, with
one default per setting, in one place.

Training and model defaults live in :class:`mer_utils.train.TrainConfig`; preprocessing
defaults in :mod:`mer_utils.preprocess` (``N_KEY``, ``PREPROCESS_SIZE``) and
:mod:`mer_utils.face` (``FACE_CROP``); LBP-TOP's in :mod:`mer_utils.baselines.lbptop`.
:class:`ExperimentConfig` leaves a field at None to mean "that default" and fills it in
:meth:`ExperimentConfig.resolved`; notebooks, profiles and the CLI build their configuration
with :meth:`ExperimentConfig.from_parameters`, the one conversion from parameter values
("" for no file, "official" for the shipped MEGC2019 list, paths relative to the repository)
to a configuration. Nothing else restates a default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mer_utils.errors import ConfigError, check_int

CROPNET_METHODS = ("ars", "rrs", "farneback", "tvl1")  # the CropNet input images (preprocess.METHODS)
METHODS = CROPNET_METHODS + ("lbptop",)  # ... and the MEGC2019 baseline
NO_WEIGHTS = ("", "none")  # pretrained_weights values meaning "train from scratch"
CROPNET_FIELDS = ("epochs", "image_size", "batch_size", "lr", "fc_lr", "augmentation", "ensemble", "cgpo",
                  "recalibrate_bn", "backbone", "pretrained_weights", "n_key", "preprocess_size")
# defaults from TrainConfig
TRAIN_FIELDS = ("epochs", "image_size", "batch_size", "lr", "fc_lr", "augmentation", "ensemble", "cgpo",
                "recalibrate_bn", "backbone")
LBPTOP_FIELDS = ("lbptop_frames", "lbptop_size")
# Recorded in config.json but not compared on resume: the cache is keyed by its parameters,
# so where it lives does not change any result.
RESULT_NEUTRAL_FIELDS = ("cache_dir",)


def resolve_weights(value: str | Path | None) -> str | None:
    """A ``pretrained_weights`` value: None, "" or "none" (from scratch) -> None; "imagenet"
    -> "imagenet" (timm's ImageNet weights); anything else must be an existing file, returned
    absolute (relative paths are taken from the current directory)."""
    from mer_utils.models.cropnet import IMAGENET

    if value is None or str(value).strip().lower() in NO_WEIGHTS:
        return None
    if str(value).strip().lower() == IMAGENET:
        return IMAGENET
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"pretrained_weights {str(value)!r} is neither 'imagenet', 'none' nor an existing file "
                          f"(no file at {path})")
    return str(path)


def epochs_for(protocol: str, epochs: int | None, casme2_epochs: int | None = 0) -> int | None:
    """The epochs of an experiment on ``protocol``: ``casme2_epochs`` for casme2-5class when it
    is above 0, else ``epochs`` (None: the configuration's default). The notebooks' parameter
    ``casme2_epochs`` lets a profile train CASME II's five classes, whose training folds are
    the smaller, for more epochs than the composite."""
    if casme2_epochs is not None and (isinstance(casme2_epochs, bool) or not isinstance(casme2_epochs, int)
                                      or casme2_epochs < 0):
        raise ConfigError(f"casme2_epochs must be 0 (use epochs) or a positive integer, got {casme2_epochs!r}")
    return casme2_epochs if casme2_epochs and protocol == "casme2-5class" else epochs


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a LOSO experiment's results. None means "the default" (see
    the module docstring); :meth:`resolved` fills every default in.

    ``method``: "ars", "rrs", "farneback", "tvl1" train CropNet on that image; "lbptop" is
    the MEGC2019 baseline (LBP-TOP + linear SVM), which ignores the CropNet fields (resolved
    to None) and n_key. ``pretrained_weights``: None (from scratch), "imagenet" (timm's
    ImageNet weights, downloaded once) or a local weights file.
    """

    root: str
    protocol: str
    method: str = "ars"
    megc_list: str | None = None
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    fc_lr: float | None = None
    augmentation: str | None = None
    ensemble: int | None = None
    seed: int | None = None
    n_key: int | None = None
    cgpo: bool | None = None
    recalibrate_bn: bool | None = None
    face_crop: str | None = None
    cache_dir: str | None = None
    backbone: str | None = None
    pretrained_weights: str | None = None
    preprocess_size: int | None = None
    lbptop_frames: int | None = None
    lbptop_size: int | None = None

    def resolved(self) -> "ExperimentConfig":
        """A copy with every default filled in and every path absolute; ConfigError on bad values."""
        from mer_utils.baselines import lbptop
        from mer_utils.data import PROTOCOLS
        from mer_utils.face import FACE_CROP, FACE_CROPS, MIN_SIZE
        from mer_utils.paths import default_cache_dir
        from mer_utils.preprocess import N_KEY, PREPROCESS_SIZE
        from mer_utils.train import AUGMENTATIONS, TrainConfig

        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        face_crop = self.face_crop or FACE_CROP
        if face_crop not in FACE_CROPS:
            raise ConfigError(f"face_crop {face_crop!r} is not one of {FACE_CROPS}")
        if self.megc_list is not None and self.protocol != "megc2019":
            raise ConfigError(f"megc_list applies to protocol megc2019 only, not {self.protocol!r}")
        root = Path(self.root).expanduser().resolve()
        train = TrainConfig()
        values = dict(
            root=str(root),
            megc_list=str(Path(self.megc_list).expanduser().resolve()) if self.megc_list else None,
            seed=train.seed if self.seed is None else self.seed,
            face_crop=face_crop,
            cache_dir=str(Path(self.cache_dir).expanduser().resolve() if self.cache_dir else default_cache_dir(root)),
        )
        if self.method == "lbptop":
            values.update({name: None for name in CROPNET_FIELDS})
            values.update(lbptop_frames=self.lbptop_frames or lbptop.FRAMES, lbptop_size=self.lbptop_size or lbptop.SIZE)
        else:
            values.update({name: None for name in LBPTOP_FIELDS})
            for name in TRAIN_FIELDS:
                value = getattr(self, name)
                values[name] = getattr(train, name) if value is None else value
            values["n_key"] = N_KEY if self.n_key is None else self.n_key
            values["preprocess_size"] = PREPROCESS_SIZE if self.preprocess_size is None else self.preprocess_size
            values["pretrained_weights"] = resolve_weights(self.pretrained_weights)
        config = dataclasses.replace(self, **values)
        for name in ("epochs", "image_size", "batch_size", "ensemble", "n_key", "lbptop_frames", "lbptop_size"):
            if getattr(config, name) is not None:
                check_int(name, getattr(config, name))
        if config.preprocess_size is not None:
            check_int("preprocess_size", config.preprocess_size, MIN_SIZE, note="the aligned face crop's side")
        if config.backbone is not None and config.backbone != train.backbone:
            from mer_utils.models.cropnet import check_backbone  # imports timm (seconds): another backbone only

            check_backbone(config.backbone)
        if config.cgpo and config.image_size is not None and (config.image_size % 2 or config.image_size < 4):
            raise ConfigError("image_size must be an even number >= 4 with CGPO (one pyramid step halves it), "
                              f"got {config.image_size}")
        if config.augmentation is not None and config.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {config.augmentation!r}")
        for name in ("cgpo", "recalibrate_bn"):
            value = getattr(config, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        for name in ("lr", "fc_lr"):
            value = getattr(config, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        if config.seed is not None and (isinstance(config.seed, bool) or not isinstance(config.seed, int)
                                        or not 0 <= config.seed < 2 ** 32):
            raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1, got {config.seed!r}")
        return config

    def replace(self, **changes) -> "ExperimentConfig":
        """A copy with some fields changed (``config.replace(method="rrs", cgpo=False)``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ExperimentConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object], **overrides) -> "ExperimentConfig":
        """The configuration of a notebook's ``parameters`` cell or a CLI's options: reads the
        names it knows (``data_root`` or ``root``, ``protocol``, ``method``, ``megc_list``,
        ``cache_dir``, ``pretrained_weights`` and every training setting) and ignores the rest,
        so a notebook may pass ``globals()``; ``overrides`` win. Parameter conventions:
        relative paths are taken from the repository root, "" means no file (the default),
        ``megc_list="official"`` is the shipped list and applies to megc2019 only, None
        leaves a setting at its default. ``casme2_epochs`` (a notebook parameter, not a
        configuration field), when above 0, replaces ``epochs`` for protocol casme2-5class
        (:func:`epochs_for`) unless ``overrides`` set the epochs."""
        from mer_utils.models.cropnet import IMAGENET
        from mer_utils.paths import megc_list_path, repo_path

        values = {**{k: v for k, v in parameters.items() if not k.startswith("_")}, **overrides}
        root = values.get("root", values.get("data_root"))
        if root is None or not str(root):
            raise ConfigError("a configuration needs data_root (the folder holding CASME2/, SAMM/, SMIC/)")
        if "protocol" not in values:
            raise ConfigError("a configuration needs a protocol")
        if "epochs" not in overrides:
            values["epochs"] = epochs_for(values["protocol"], values.get("epochs"), values.get("casme2_epochs"))
        fields = {f.name for f in dataclasses.fields(cls)} - {"root", "megc_list", "cache_dir", "pretrained_weights"}
        config = {k: values[k] for k in fields if k in values and values[k] is not None}
        weights = values.get("pretrained_weights")
        if weights is not None and str(weights).strip().lower() not in (*NO_WEIGHTS, IMAGENET):
            weights = str(repo_path(weights))
        config.update(
            root=str(repo_path(root)),
            megc_list=megc_list_path(values.get("megc_list")) if values["protocol"] == "megc2019" else None,
            cache_dir=str(repo_path(values["cache_dir"])) if values.get("cache_dir") else None,
            pretrained_weights=weights if weights is not None and str(weights).strip() else None,
        )
        return cls(**config)

    def train_config(self, max_threads: int | None = None, progress: bool = False):
        """The ``train.TrainConfig`` of a CropNet fold under this (resolved) configuration."""
        from mer_utils.data import PROTOCOLS
        from mer_utils.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, fc_lr=self.fc_lr, image_size=self.image_size,
            augmentation=self.augmentation, ensemble=self.ensemble, cgpo=self.cgpo, recalibrate_bn=self.recalibrate_bn,
            backbone=self.backbone, seed=self.seed, pretrained_weights=self.pretrained_weights,
            classes=PROTOCOLS[self.protocol].classes, max_threads=max_threads, progress=progress,
        )


def experiment_settings(config: ExperimentConfig) -> dict:
    """Everything a (resolved) configuration decides, as ``config.json`` records it: the
    ExperimentConfig, and the settings it leaves to their module defaults ("train": the rest
    of train.TrainConfig; "lbptop": the descriptor), so a changed default is noticed too."""
    from mer_utils.baselines import lbptop

    settings = {"config": config.to_dict()}
    if config.method == "lbptop":
        settings["lbptop"] = dict(lbptop.DESCRIPTOR)
    else:
        train = dataclasses.asdict(config.train_config())
        settings["train"] = {k: v for k, v in train.items()
                             if k not in settings["config"] and k not in ("classes", "max_threads", "progress")}
    return json.loads(json.dumps(settings))  # tuples as lists, as they read back


def experiment_key(config: ExperimentConfig) -> str:
    """The folder name of a (resolved) configuration in the shared experiment store:
    readable parts and a hash of every setting that changes a result, e.g.
    ``casme2-5class_ars_k5_3f9a0c1b2d``; the same experiment asked for by two notebooks
    gets the same folder."""
    settings = experiment_settings(config)
    for name in RESULT_NEUTRAL_FIELDS:
        settings["config"].pop(name, None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    parts = [config.protocol, config.method]
    if config.method != "lbptop":
        parts += [] if config.cgpo else ["nocgpo"]
        parts.append(f"k{config.n_key}")
    return "_".join(parts + [digest])
