"""Training one LOSO fold: leakage checks, learning, repeatability, the predictions table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mer_utils.data.sample import Sample
from mer_utils.errors import ConfigError, TrainingError
from mer_utils.train import (CUDA_LOADER_WORKERS, TrainConfig, build_transform, predict_probs, processor_name,
                             split_fold, train_fold, train_model)

CLASSES = ("alpha", "beta", "gamma", "delta")


def make_fold_data(n_samples: int, n_subjects: int, size: int, seed: int = 0):
    """Samples cycling through CLASSES and subjects; each class lights up its own image quadrant."""
    rng = np.random.default_rng(seed)
    samples, images = [], {}
    for i in range(n_samples):
        label = CLASSES[i % len(CLASSES)]
        subject = f"sub{i % n_subjects + 1:02d}"
        sample = Sample("casme2", subject, f"EP{i:02d}", label, 1, 5, 9, False, (), (), label=label)
        image = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        half = size // 2
        row, col = divmod(i % len(CLASSES), 2)
        image[row * half:(row + 1) * half, col * half:(col + 1) * half] += 200
        samples.append(sample)
        images[sample.key] = image
    return samples, images


def tiny_config(**changes) -> TrainConfig:
    """The paper's backbone with a small head (64 channels, 32-d z_i) so a fold takes seconds.

    One thread: on a busy 2-core machine two torch threads on these tiny tensors run up to
    50 times slower than one.
    """
    settings = dict(epochs=2, batch_size=4, image_size=32, head_channels=64, embed_dim=32,
                    progress=False, device="cpu", classes=CLASSES, max_threads=1)
    settings.update(changes)
    return TrainConfig(**settings)


def test_model_overfits_eight_samples():
    samples, images = make_fold_data(n_samples=10, n_subjects=5, size=64)  # 8 train, 2 test
    # the paper-size model and default optimiser settings; full batch, no augmentation
    config = tiny_config(epochs=6, batch_size=8, image_size=64, augmentation="none", head_channels=1536, embed_dim=1280)
    result = train_fold(samples, "sub05", config, images)
    assert result.n_train == 8
    assert len(result.epoch_losses) == 6
    assert result.epoch_losses[-1] < result.epoch_losses[0] / 2


def test_fold_predicts_the_test_subject_only():
    samples, images = make_fold_data(n_samples=12, n_subjects=4, size=40)
    result = train_fold(samples, "sub02", tiny_config(image_size=32), images)
    assert result.subjects == ["sub02"] * 3
    assert result.keys == [s.key for s in samples if s.subject_id == "sub02"]
    assert result.n_train == 9
    assert result.y_true == [s.label for s in samples if s.subject_id == "sub02"]
    assert set(result.y_pred) <= set(CLASSES)
    assert result.probs.shape == (3, 4)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert (result.device, result.amp, result.channels_last, result.pretrained) == ("cpu", False, True, False)
    assert result.config["epochs"] == 2 and result.config["classes"] == list(CLASSES)
    json.dumps(result.config)  # stored beside the predictions by the runner
    assert not torch.are_deterministic_algorithms_enabled()  # global switch restored

    frame = result.to_frame()
    assert list(frame.columns) == ["dataset", "subject", "clip", "true_label", "pred_label"] + [
        f"prob_{name}" for name in CLASSES
    ]
    assert frame["pred_label"].tolist() == result.y_pred
    np.testing.assert_array_equal(frame["prob_gamma"].to_numpy(), result.probs[:, 2])


def test_same_config_gives_identical_predictions():
    samples, images = make_fold_data(n_samples=8, n_subjects=4, size=32)
    config = tiny_config(epochs=1, augmentation="paper")  # augmentation randomness must be seeded too
    first = train_fold(samples, "sub01", config, images)
    second = train_fold(samples, "sub01", config, images)
    assert first.epoch_losses == second.epoch_losses
    np.testing.assert_array_equal(first.probs, second.probs)
    assert first.y_pred == second.y_pred
    other_seed = train_fold(samples, "sub01", tiny_config(epochs=1, augmentation="paper", seed=1), images)
    assert not np.array_equal(first.probs, other_seed.probs)


def test_leakage_and_missing_test_subject_are_refused():
    samples, images = make_fold_data(n_samples=8, n_subjects=4, size=32)
    with pytest.raises(ConfigError, match="sub09.*no samples"):
        split_fold(samples, "sub09")
    # the same clip listed again under another subject id would put the test clip into training
    relabelled = samples[0].replace(subject_id="sub04")
    with pytest.raises(ConfigError, match="leaks.*casme2/sub01/EP00"):
        train_fold(samples + [relabelled], "sub01", tiny_config(), images)
    train, test = split_fold(samples, "sub01")
    assert {s.subject_id for s in test} == {"sub01"} and "sub01" not in {s.subject_id for s in train}


def test_bad_inputs_name_the_clip():
    samples, images = make_fold_data(n_samples=8, n_subjects=4, size=32)
    without_image = dict(images)
    del without_image[samples[1].key]
    with pytest.raises(ConfigError, match="casme2/sub02/EP01.*no preprocessed image"):
        train_fold(samples, "sub01", tiny_config(), without_image)
    grey = dict(images)
    grey[samples[1].key] = images[samples[1].key][..., 0]
    with pytest.raises(ConfigError, match=r"casme2/sub02/EP01.*\(H, W, 3\) uint8"):
        train_fold(samples, "sub01", tiny_config(), grey)
    with pytest.raises(ConfigError, match="'delta' is not one of the classes"):
        train_fold(samples, "sub01", tiny_config(classes=CLASSES[:3]), images)
    with pytest.raises(ConfigError, match="without CGPO a training batch needs >= 2"):
        train_fold(samples, "sub01", tiny_config(cgpo=False, batch_size=1), images)
    # one training clip: an epoch had no batch (its last batch of one is dropped) and the
    # loss a division by zero (mer train on a one-clip set)
    two_subjects = [s for s in samples if s.subject_id in ("sub01", "sub02")][:3]
    assert sum(s.subject_id == "sub02" for s in two_subjects) == 1
    with pytest.raises(ConfigError, match=r"^fold sub01: 1 training clip; training needs 2 or more"):
        train_fold(two_subjects, "sub01", tiny_config(), images)
    with pytest.raises(ConfigError, match=r"^train casme2: 1 training clip; training needs 2 or more"):
        train_model(samples[:1], tiny_config(), images, desc="train casme2")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")


def test_divergence_and_non_finite_weights_are_named_not_scored():
    """A learning rate that blows the weights up stops the fold with "diverged" and the rates
    to lower, instead of scoring NaN probabilities; a model with non-finite weights predicts
    nothing."""
    samples, images = make_fold_data(n_samples=8, n_subjects=4, size=32)
    with pytest.raises(TrainingError, match=r"fold sub01: training diverged in epoch 1: the loss is nan and the "
                                            r"weights are no longer finite; lower lr \(1e\+30\) or fc_lr"):
        train_fold(samples, "sub01", tiny_config(lr=1e30, fc_lr=1e30), images)
    config = tiny_config(epochs=1)
    model = train_model(samples, config, images).model
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"no finite probabilities for 2 of 2 image\(s\)"):
        predict_probs(model, [images[s.key] for s in samples[:2]], config)


def test_augmentation_follows_the_paper_order_and_test_images_are_only_normalised():
    names = [type(step).__name__ for step in build_transform(320, "paper").transforms]
    assert names == ["Resize", "ColorJitter", "RandomGrayscale", "RandomHorizontalFlip", "RandomRotation",
                     "ToDtype", "Normalize"]  # resized first: the paper's augmentation on the network's pixels
    jitter = build_transform(320, "paper").transforms[1]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.2, 1.8)
    assert jitter.hue == (-0.5, 0.5)
    # "geometric": the paper's flip and rotation, same parameters, no colour jitter or grayscale
    geometric = build_transform(320, "geometric").transforms
    assert [type(step).__name__ for step in geometric] == ["Resize", "RandomHorizontalFlip", "RandomRotation",
                                                           "ToDtype", "Normalize"]
    assert geometric[1].p == 0.5 and list(geometric[2].degrees) == [-15.0, 15.0]
    image = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    plain = build_transform(32)(image)  # "none", as test images
    assert [type(step).__name__ for step in build_transform(32, "none").transforms] == ["Resize", "ToDtype", "Normalize"]
    assert plain.shape == (3, 32, 32)
    torch.testing.assert_close(plain[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    with pytest.raises(ConfigError, match="augmentation 'colour' is not one of"):
        build_transform(32, "colour")
    with pytest.raises(ConfigError, match="augmentation 'flip' is not one of"):
        TrainConfig(augmentation="flip")


def test_fully_connected_layers_train_at_their_own_rate(monkeypatch):
    """AdamP gets two groups: CropNet.fc_parameters() (head FC, p_i, final FC) at fc_lr and
    every other parameter at lr; the final FC starts at zero, so the first logits are equal."""
    import mer_utils.train as train_module
    from mer_utils.train import _fit, _reproducible

    made = []

    class Recording(train_module.AdamP):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module, "AdamP", Recording)
    samples, images = make_fold_data(n_samples=8, n_subjects=4, size=32)
    train, _ = split_fold(samples, "sub01")
    config = tiny_config(epochs=1, lr=1e-3, fc_lr=2e-5, schedule="constant", warmup_epochs=0)
    untrained = train_module.build_model(config, len(CLASSES))
    assert torch.count_nonzero(untrained.classifier[1].weight) == 0
    assert torch.count_nonzero(untrained(torch.randn(2, 3, 32, 32))) == 0  # every class at logit 0
    device = torch.device("cpu")
    with _reproducible(config.seed, device, config.max_threads):
        fitted = _fit(train, CLASSES, config, images, device, desc="test")
    rest, fc = made[0].param_groups
    assert [g["lr"] for g in (rest, fc)] == [1e-3, 2e-5]
    fc_ids = {id(p) for p in fc["params"]}
    assert fc_ids == {id(p) for p in fitted.model.fc_parameters()}
    assert fc_ids >= {id(fitted.model.classifier[1].weight), id(fitted.model.head[-1].weight),
                      id(fitted.model.pos_embed)}
    assert not fc_ids & {id(p) for p in rest["params"]}
    assert len(fc["params"]) + len(rest["params"]) == len(list(fitted.model.parameters()))
    assert torch.count_nonzero(fitted.model.classifier[1].weight) > 0  # it did train
    with pytest.raises(ConfigError, match="fc_lr"):
        tiny_config(fc_lr=0.0)


def test_batchnorm_statistics_are_recalibrated_on_the_training_images():
    """After the last epoch every BatchNorm holds the exact mean and variance of its input
    over the un-augmented training images under the final weights, not the running
    averages of augmented batches; the test subject's images play no part."""
    from mer_utils.train import _as_tensors, _fit, _reproducible, recalibrate_batchnorm

    samples, images = make_fold_data(n_samples=12, n_subjects=4, size=32)
    train, test = split_fold(samples, "sub01")
    config = tiny_config(epochs=1, augmentation="paper")
    device = torch.device("cpu")
    with _reproducible(config.seed, device, config.max_threads):
        fitted = _fit(train, CLASSES, config, images, device, desc="test")
    model = fitted.model
    norm = model.head[1]  # the head's BatchNorm2d over every CGPO image's features
    assert norm.momentum == 0.1 and not model.training  # restored; the model is left for testing
    seen = []
    handle = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    try:
        # 9 training samples make one chunk: the statistics are those of one training-mode
        # pass over all the un-augmented training images under the final weights
        model.train()
        tensors = _as_tensors(train, images, config.image_size)
        transform = build_transform(config.image_size)
        with torch.no_grad():
            model(torch.stack([transform(t) for t in tensors]))
    finally:
        handle.remove()
        model.eval()
    features = seen[0].transpose(0, 1).flatten(1)  # channels x values
    torch.testing.assert_close(norm.running_mean, features.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, features.var(1, unbiased=True), rtol=1e-3, atol=1e-5)

    # without recalibration the running averages of the augmented batches stay
    with _reproducible(config.seed, device, config.max_threads):
        plain = _fit(train, CLASSES, tiny_config(epochs=1, augmentation="paper", recalibrate_bn=False), images, device, "test")
    assert not torch.allclose(plain.model.head[1].running_mean, norm.running_mean)
    # and it is a pure function of the final weights and the training images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_batchnorm(model, _as_tensors(train, images, config.image_size), config, device, fitted.autocast)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, before[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_loader_processes_default_to_none_on_cpu_and_a_fixed_number_on_cuda():
    assert TrainConfig().loader_workers(torch.device("cpu")) == 0
    assert TrainConfig().loader_workers(torch.device("cuda")) == CUDA_LOADER_WORKERS == 6
    assert TrainConfig(num_workers=2).loader_workers(torch.device("cpu")) == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="num_workers"):
            TrainConfig(num_workers=bad)


def test_memory_format_defaults_to_channels_last_on_cpu_and_contiguous_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrainConfig().uses_channels_last(cpu) is True
    assert TrainConfig().uses_channels_last(cuda) is False
    assert TrainConfig(channels_last=True).uses_channels_last(cuda) is True
    assert TrainConfig(channels_last=False).uses_channels_last(cpu) is False


def test_loader_processes_are_forked_on_linux_whatever_the_default_start_method():
    """A Dask worker's default start method is "spawn"; the loader names "fork" itself."""
    import sys

    from mer_utils.train import loader_start_method

    assert loader_start_method(0) is None  # no loader processes: nothing to start
    assert loader_start_method(6) == ("fork" if sys.platform.startswith("linux") else None)


@pytest.mark.slow
def test_loader_processes_give_a_repeatable_fold():
    """Two loader processes draw their own augmentation; the same setting gives the same fold."""
    samples, images = make_fold_data(12, 3, 32)
    first, second = (train_fold(samples, "sub01", tiny_config(num_workers=2), images) for _ in range(2))
    assert first.epoch_losses == second.epoch_losses and np.array_equal(first.probs, second.probs)
    assert first.config["num_workers"] == 2 and len(first.seconds["epochs"]) == 2


def test_an_ensemble_averages_networks_trained_as_single_runs_with_consecutive_seeds():
    samples, images = make_fold_data(n_samples=12, n_subjects=4, size=40)
    singles = [train_fold(samples, "sub02", tiny_config(seed=seed), images) for seed in (3, 4)]
    ensemble = train_fold(samples, "sub02", tiny_config(seed=3, ensemble=2), images)
    # member k is the single run with seed 3 + k: the same losses, and the probabilities averaged
    assert ensemble.member_losses == [single.epoch_losses for single in singles]
    np.testing.assert_allclose(ensemble.epoch_losses, np.mean([s.epoch_losses for s in singles], axis=0))
    np.testing.assert_allclose(ensemble.probs, (singles[0].probs + singles[1].probs) / 2, atol=1e-6)
    assert ensemble.y_pred == [CLASSES[i] for i in ensemble.probs.argmax(axis=1)]
    assert len(ensemble.seconds["epochs"]) == 2 and ensemble.config["ensemble"] == 2
    assert singles[0].member_losses == []  # one network: no members recorded


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_an_ensemble_needs_a_whole_number_of_networks(bad):
    with pytest.raises(ConfigError, match="ensemble must be a whole number >= 1"):
        TrainConfig(ensemble=bad)


def test_a_daemonic_process_trains_without_loader_processes_and_says_so(monkeypatch):
    """A ``dask worker`` is daemonic unless told otherwise, and a daemonic process may not
    start DataLoader processes (CUDA's default is 6): the fold augments in its own process."""
    import types

    from mer_utils import train as train_module

    config = TrainConfig(num_workers=None)
    assert config.loader_workers(torch.device("cuda")) == train_module.CUDA_LOADER_WORKERS
    monkeypatch.setattr(train_module.multiprocessing, "current_process", lambda: types.SimpleNamespace(daemon=True))
    with pytest.warns(UserWarning, match=r"daemonic and may not start the 6 DataLoader processes .*"
                                         r"DASK_DISTRIBUTED__WORKER__DAEMON=False"):
        assert config.loader_workers(torch.device("cuda")) == 0
    assert config.loader_workers(torch.device("cpu")) == 0  # none asked for: nothing to say


def test_bfloat16_only_where_the_gpu_computes_it_natively(monkeypatch):
    """V100 and T4 only emulate bfloat16 (torch's is_bf16_supported says True for them by
    default): they train in float16 with a gradient scaler, as README says."""
    import contextlib

    from mer_utils import train as train_module

    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or including_emulation)
    assert train_module._native_bf16(torch.device("cuda:1")) is False and asked == [False]


def test_processor_name_gives_the_cpu_and_its_instruction_set(monkeypatch):
    name = processor_name("cpu")
    assert name.endswith(", " + torch.backends.cpu.get_cpu_capability()) and len(name.split(", ")[0]) > 0
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a limit the user set changes the kernels: it is named
    assert processor_name("cpu") == name + ", ONEDNN_MAX_CPU_ISA=AVX2"
