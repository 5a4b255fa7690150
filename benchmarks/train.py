"""CropNet speed and memory on this machine (run by hand; not a test).

    .venv/bin/python benchmarks/train.py            # everything, a few minutes on 2 cores
    .venv/bin/python benchmarks/train.py --skip-fold --iterations 1

Prints: parameter count beside the paper's 7.6 M; training throughput (forward + backward +
AdamP step, samples/s) at image sizes 320, 160 and 96 with and without CGPO; the time of one
batched B*10 backbone pass against ten separate passes; peak resident memory of one training
step per batch size (each in a fresh subprocess, VmHWM); and the wall time
of one LOSO fold (40 samples of 64 x 64, 5 epochs); first (alone with --demo-fold-only) one
CASME II fold at the demo's size in three variants (oneDNN everywhere; the small-map kernels;
those and channels-last, the kit's default) and one AdamP step of the kit against the authors'
package. On a shared machine the figures are noisy.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from mer_utils.data.sample import Sample
from mer_utils.models import PAPER_PARAMETERS, CropNet, count_parameters
from mer_utils.optim import AdamP
from mer_utils.train import TrainConfig, train_fold


def training_step(model: CropNet, optimizer: AdamP, batch: torch.Tensor, labels: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(batch), labels).backward()
    optimizer.step()


def throughput(image_size: int, cgpo: bool, batch_size: int, iterations: int) -> float:
    """Training samples per second (one warm-up step excluded)."""
    torch.manual_seed(0)
    model = CropNet(num_classes=5, cgpo=cgpo, image_size=image_size).train()
    optimizer = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
    batch = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 5, (batch_size,))
    training_step(model, optimizer, batch, labels)
    start = time.perf_counter()
    for _ in range(iterations):
        training_step(model, optimizer, batch, labels)
    return batch_size * iterations / (time.perf_counter() - start)


def batched_versus_separate(batch_size: int, iterations: int) -> tuple[float, float]:
    """Seconds for the backbone (forward + backward) on B*10 images of 160 px: one pass, ten passes."""
    torch.manual_seed(0)
    backbone = CropNet(num_classes=5).backbone.train()
    images = torch.randn(batch_size * 10, 3, 160, 160)

    def one_pass() -> None:
        backbone(images).sum().backward()

    def ten_passes() -> None:
        for chunk in images.split(batch_size):
            backbone(chunk).sum().backward()

    timings = []
    for run in (one_pass, ten_passes):
        run()  # warm-up
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        timings.append((time.perf_counter() - start) / iterations)
    return timings[0], timings[1]


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: VmHWM from /proc (getrusage's ru_maxrss would
    include the parent's resident set at fork time, which Linux carries across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_child(image_size: int, cgpo: bool, batch_size: int) -> None:
    """In a fresh process: print the peak resident set (MiB) after building the model, then after one step."""
    model = CropNet(num_classes=5, cgpo=cgpo, image_size=image_size).train()
    optimizer = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
    batch = torch.randn(batch_size, 3, image_size, image_size)
    before = peak_rss_mib()
    training_step(model, optimizer, batch, torch.randint(0, 5, (batch_size,)))
    print(before, peak_rss_mib())


def peak_memory(image_size: int, cgpo: bool, batch_size: int) -> tuple[float, float]:
    command = [sys.executable, __file__, "--memory-child", str(image_size), str(int(cgpo)), str(batch_size),
               "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    before, after = out.stdout.strip().splitlines()[-1].split()
    return float(before), float(after)


def fold_wall_time(n_samples: int = 40, n_subjects: int = 8, size: int = 64, epochs: int = 5) -> tuple[float, list]:
    """One train_fold with the default model on synthetic 64 x 64 images; returns seconds, losses."""
    rng = np.random.default_rng(0)
    classes = ("others", "disgust", "happiness", "repression", "surprise")
    samples, images = [], {}
    for i in range(n_samples):
        label = classes[i % len(classes)]
        sample = Sample("casme2", f"sub{i % n_subjects + 1:02d}", f"EP{i:02d}", label, 1, 5, 9, False, (), (),
                        label=label)
        samples.append(sample)
        images[sample.key] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    config = TrainConfig(epochs=epochs, image_size=size, classes=classes, progress=False, device="cpu",
                         max_threads=torch.get_num_threads())
    result = train_fold(samples, "sub01", config, images)
    return result.wall_time_s, result.epoch_losses


DEMO_VARIANTS = {
    "oneDNN": "oneDNN's nn.Conv2d on every feature map, contiguous tensors",
    "contiguous": "the small-map CPU kernels (mer_utils.models.small_maps) on maps of at most 2 x 2, contiguous",
    "now": "the small-map kernels and channels-last tensors (TrainConfig.channels_last, on CPU too)",
}


def demo_fold(variant: str) -> tuple[float, int]:
    """One LOSO fold at the synthetic demo's size (``reproduce.PROFILES["synthetic-cpu"]``:
    37 CASME II-sized samples over 6 subjects, cached images of preprocess_size resized to
    image_size, the profile's CASME II epochs, batch and augmentation). ``variant`` "oneDNN"
    builds CropNet without the small-map kernels (every convolution through oneDNN) and keeps
    contiguous tensors; "contiguous" has the kernels but not channels-last; "now" is the kit's
    default. Each variant runs in a fresh process. Returns (seconds, sample passes)."""
    import mer_utils.models.cropnet as cropnet_module
    import mer_utils.train as train_module
    from mer_utils.config import epochs_for
    from mer_utils.reproduce import PROFILES

    if variant == "oneDNN":
        cropnet_module.use_small_map_kernels = lambda model: 0
    profile = PROFILES["synthetic-cpu"]
    rng = np.random.default_rng(0)
    classes = ("others", "disgust", "happiness", "repression", "surprise")
    samples, images = [], {}
    for i in range(37):
        label = classes[i % len(classes)]
        sample = Sample("casme2", f"sub{i % 6 + 1:02d}", f"EP{i:02d}", label, 1, 5, 9, False, (), (), label=label)
        samples.append(sample)
        side = profile["preprocess_size"]
        images[sample.key] = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    epochs = epochs_for("casme2-5class", profile["epochs"], profile.get("casme2_epochs"))
    config = TrainConfig(epochs=epochs, image_size=profile["image_size"], batch_size=profile["batch_size"],
                         lr=profile.get("lr", TrainConfig.lr), augmentation=profile["augmentation"],
                         classes=classes, progress=False, device="cpu",
                         max_threads=torch.get_num_threads(), channels_last=variant == "now")
    result = train_module.train_fold(samples, "sub01", config, images)
    return result.wall_time_s, result.n_train * config.epochs


def optimizer_step_seconds(iterations: int) -> tuple[float, float]:
    """Seconds of one step of the kit's AdamP and of the ``adamp`` package's, on the same
    CropNet parameters and gradients (one demo-size batch), interleaved; best of ``iterations``."""
    import adamp

    torch.manual_seed(0)
    model = CropNet(num_classes=5, image_size=64).train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.arange(4)).backward()
    optimizers = {"kit": AdamP(model.parameters(), lr=1e-6, weight_decay=1e-2),
                  "package": adamp.AdamP(model.parameters(), lr=1e-6, weight_decay=1e-2)}
    best = {name: float("inf") for name in optimizers}
    for _ in range(iterations + 1):  # the first step of each allocates its state
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best["kit"], best["package"]


def demo_fold_child(variant: str, threads: int) -> tuple[float, int]:
    command = [sys.executable, __file__, "--demo-fold-child", variant, "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, passes = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per throughput step")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[2, 4, 8],
                        help="batch sizes >= 2 (ReXNet's SE BatchNorm cannot train on one image)")
    parser.add_argument("--skip-fold", action="store_true")
    parser.add_argument("--demo-fold-only", action="store_true", help="only the demo-size fold (three variants) and the optimiser step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--demo-fold-child", choices=tuple(DEMO_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, type=int, metavar=("SIZE", "CGPO", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        peak_memory_child(args.memory_child[0], bool(args.memory_child[1]), args.memory_child[2])
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo_fold_child:
        seconds, passes = demo_fold(args.demo_fold_child)
        print(seconds, passes)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\none LOSO fold at the synthetic demo's size (profile synthetic-cpu), side by side,"
          " each in a fresh process:")
    timings = {}
    for variant in tuple(DEMO_VARIANTS) * 2:  # interleaved twice: the machine's load drifts
        seconds, passes = demo_fold_child(variant, torch.get_num_threads())
        timings.setdefault(variant, []).append(seconds)
        print(f"  {variant} ({DEMO_VARIANTS[variant]}): {seconds:.1f} s "
              f"({1000 * seconds / passes:.0f} ms per training sample pass)")
    best = {variant: min(values) for variant, values in timings.items()}
    print(f"  ratios (best of two each): now / oneDNN {best['now'] / best['oneDNN']:.2f}, "
          f"now / contiguous {best['now'] / best['contiguous']:.2f}")
    kit, package = optimizer_step_seconds(iterations=10)
    print(f"\none AdamP step over CropNet's parameters (gradients of one demo-size batch): kit {1000 * kit:.0f} ms, "
          f"the authors' adamp package {1000 * package:.0f} ms, ratio {kit / package:.2f}")
    if args.demo_fold_only:
        return
    for cgpo in (True, False):
        total = count_parameters(CropNet(num_classes=5, cgpo=cgpo))
        print(f"parameters (5 classes, cgpo={cgpo}): {total:,} ({total / 1e6:.2f} M; paper {PAPER_PARAMETERS / 1e6:.1f} M)")

    print(f"\ntraining throughput, batch {args.batch_size}, {args.iterations} steps (samples/s)")
    for size in (320, 160, 96):
        rates = {cgpo: throughput(size, cgpo, args.batch_size, args.iterations) for cgpo in (True, False)}
        print(f"  image {size:3d}: CGPO {rates[True]:6.2f}   single image {rates[False]:6.2f}")

    batched, separate = batched_versus_separate(args.batch_size, args.iterations)
    print(f"\nbackbone fwd+bwd, {args.batch_size * 10} images of 160 px: one batch {batched:.2f} s, "
          f"ten passes {separate:.2f} s, ratio {batched / separate:.2f}")

    print("\npeak resident memory, fresh process per line, MiB: after building the model -> after one step")
    for batch_size in args.memory_batches:
        cgpo_mib = peak_memory(320, True, batch_size)
        single_mib = peak_memory(320, False, batch_size)
        print(f"  batch {batch_size:2d} at 320: CGPO {cgpo_mib[0]:5.0f} -> {cgpo_mib[1]:5.0f}   "
              f"single image {single_mib[0]:5.0f} -> {single_mib[1]:5.0f}")

    if not args.skip_fold:
        seconds, losses = fold_wall_time()
        print(f"\none fold, 40 samples of 64 x 64 (35 train), 5 epochs, default model: {seconds:.1f} s; "
              f"losses {', '.join(f'{x:.3f}' for x in losses)}")


if __name__ == "__main__":
    main()
