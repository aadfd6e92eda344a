"""Train the small MobileNetV1 that the accuracy tests judge: α=0.25, 32×32 input, 10 classes, on
scikit-learn's handwritten digits (issue 16, item 5).

No ImageNet is available offline, so the int8 path's accuracy is checked on this model instead:
``tests/model/test_digits_accuracy.py`` loads the files written here and compares the fp32 and the
int8 held-out top-1. torch and scikit-learn are used by this script only (never by the package or
the tests); the script installs the CPU wheels with pip when they are missing and says so.

Data: ``sklearn.datasets.load_digits`` (1797 grey 8×8 images, values 0..16), normalized like
MobileNetV1 inputs, ``x / 16 * 2 - 1`` in [-1, 1], upsampled 4× to 32×32 BILINEARLY (half-pixel
centres, edges clamped: :func:`bilinear_matrix`) and replicated to 3 channels. Bilinear, not
nearest: nearest-neighbour 4×4 blocks give the stem a few huge spikes in its activation histogram,
on which entropy calibration clipped the stem to a quarter of its range and cost up to 3 points of
int8 top-1 — an artefact of the blocks, not of quantization. Every value is a multiple of 1/512, so
the split is stored exactly as float16 (compressed); the test casts it back to float32.
Splits (seed 0): a stratified 20 % held-out test split (360 images, never trained on), and a
calibration split of 64 images drawn stratified from the training images (they are trained on,
as a deployment's calibration images come from its training distribution).

Model: our architecture exactly (:func:`mntvm.model.network.layer_specs`: the strides and the
symmetric ``kernel // 2`` padding, Conv without bias + BatchNorm (eps
:data:`~mntvm.model.network.DEFAULT_BN_EPS`) + ReLU6, global average pool, FC). Training: AdamW
with a one-cycle schedule, label smoothing, random shifts of up to ±3 pixels (at 32×32), fixed
seeds, deterministic torch algorithms on one CPU thread; after training the batchnorm running
statistics are recomputed exactly (cumulative average) over the un-augmented training images.

Output (tests/data/digits/): ``mobilenet_v1_0.25_32_digits.onnx`` written by
:func:`mntvm.export.onnx.export_onnx` from the weights in batchnorm (unfolded) form, and
``digits_split.npz`` with ``x_test`` (360, 3, 32, 32), ``y_test`` int64, ``x_calib`` (64, 3, 32, 32)
(x arrays float16, exact) and ``y_calib``. The script checks that
:func:`mntvm.model.weights.import_onnx` + :func:`mntvm.model.reference.forward` give torch's
held-out top-1 and prints both.

Run from the repository root (about 90 s of training on one core)::

    python scripts/train_digits.py            # writes tests/data/digits/
    python scripts/train_digits.py --epochs 5 --out /tmp/digits   # a quick trial elsewhere
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mntvm.core.atomic import atomic_path  # noqa: E402
from mntvm.export.onnx import export_onnx  # noqa: E402
from mntvm.model import reference  # noqa: E402
from mntvm.model.network import DEFAULT_BN_EPS, MobileNetConfig, layer_specs  # noqa: E402
from mntvm.model.weights import import_onnx  # noqa: E402

CFG = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10, activation="relu6")
ONNX_NAME = "mobilenet_v1_0.25_32_digits.onnx"
SPLIT_NAME = "digits_split.npz"
SEED = 0
TEST_FRACTION = 0.2
N_CALIB = 64
UPSAMPLE = CFG.resolution // 8  # 8×8 digits -> 32×32


def ensure_packages() -> None:
    """pip-install torch (CPU wheel) and scikit-learn if they are missing, printing what is installed."""
    wanted = [("torch", ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"]),
              ("sklearn", ["scikit-learn"])]
    for module, args in wanted:
        if importlib.util.find_spec(module) is None:
            print(f"installing {args[0]}: pip install {' '.join(args)}", flush=True)
            subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args])


def bilinear_matrix(n: int, scale: int) -> np.ndarray:
    """(n*scale, n) matrix of 1-D bilinear upsampling, half-pixel centres, edges clamped (torch's
    ``interpolate(mode="bilinear", align_corners=False)``, OpenCV's ``INTER_LINEAR``)."""
    src = np.clip((np.arange(n * scale) + 0.5) / scale - 0.5, 0, n - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    a = np.zeros((n * scale, n))
    np.add.at(a, (np.arange(n * scale), lo), 1 - (src - lo))
    np.add.at(a, (np.arange(n * scale), hi), src - lo)
    return a


def to_input(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digits, values 0..16 -> (N, 3, 32, 32) float32 in [-1, 1]: bilinear 4x, 3 channels."""
    a = bilinear_matrix(images.shape[1], UPSAMPLE)
    x = np.einsum("ij,njk,lk->nil", a, images.astype(np.float64) / 16.0 * 2.0 - 1.0, a)
    return np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1), dtype=np.float32)


def load_split():
    """(x_train, y_train, x_test, y_test, calibration indices into the training split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=TEST_FRACTION,
                                           stratify=d.target, random_state=SEED)
    y_train = d.target[idx_train].astype(np.int64)
    calib, _ = train_test_split(np.arange(len(idx_train)), train_size=N_CALIB, stratify=y_train,
                                random_state=SEED)
    return (to_input(d.images[idx_train]), y_train, to_input(d.images[idx_test]),
            d.target[idx_test].astype(np.int64), np.sort(calib))


def build_torch_model():
    """MobileNetV1 in torch, layer for layer as :func:`layer_specs` (modules named after our layers)."""
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleDict()
            for s in layer_specs(CFG):
                if s.kind == "fc":
                    self.fc = nn.Linear(s.in_channels, s.out_channels)
                    continue
                self.convs[s.name] = nn.Sequential(
                    nn.Conv2d(s.in_channels, s.out_channels, s.kernel, s.stride, s.padding, groups=s.groups,
                              bias=False),
                    nn.BatchNorm2d(s.out_channels, eps=DEFAULT_BN_EPS),
                    nn.ReLU6())

        def forward(self, x):
            for block in self.convs.values():
                x = block(x)
            return self.fc(x.mean(dim=(2, 3)))

    return Net()


def shift(xb, max_shift: int, gen):
    """Random translations of a batch by up to ``max_shift`` pixels, background (-1) filled in."""
    import torch

    n, _, h, w = xb.shape
    p = max_shift
    padded = torch.nn.functional.pad(xb, (p, p, p, p), value=-1.0)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(model, x_train, y_train, epochs: int, batch: int, max_shift: int, lr: float):
    import torch

    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch):
            j = order[i:i + batch]
            xb = shift(xt[j], max_shift, gen) if max_shift else xt[j]
            loss = loss_fn(model(xb), yt[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(j)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}/{epochs}: loss {total / len(xt):.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)


def recompute_bn_stats(model, x_train, batch: int = 256) -> None:
    """Exact batchnorm running statistics (cumulative average over the un-augmented training set)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x_train), batch):
            model(torch.from_numpy(x_train[i:i + batch]))
    model.eval()


def to_weights(model) -> dict[str, np.ndarray]:
    """torch parameters -> our names, batchnorm (unfolded) form."""
    w: dict[str, np.ndarray] = {}
    for name, block in model.convs.items():
        conv, bn = block[0], block[1]
        w[f"{name}.weight"] = conv.weight.detach().numpy()
        w[f"{name}.bn.gamma"] = bn.weight.detach().numpy()
        w[f"{name}.bn.beta"] = bn.bias.detach().numpy()
        w[f"{name}.bn.mean"] = bn.running_mean.numpy()
        w[f"{name}.bn.var"] = bn.running_var.numpy()
    w["fc.weight"] = model.fc.weight.detach().numpy()
    w["fc.bias"] = model.fc.bias.detach().numpy()
    w = {k: np.ascontiguousarray(v, np.float32) for k, v in w.items()}
    w["bn_eps"] = np.array(DEFAULT_BN_EPS, np.float32)
    return w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (one-cycle)")
    ap.add_argument("--max-shift", type=int, default=3, help="augmentation: random shifts, pixels at 32x32")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "digits")
    args = ap.parse_args(argv)

    ensure_packages()
    import torch

    torch.manual_seed(SEED)
    # One thread: as fast as two for these tiny layers when the cores are free, reproducible, and
    # spared the ~60x slowdown two OpenMP threads suffered here while other jobs shared the 2 cores.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test, calib = load_split()
    print(f"digits: {len(y_train)} train ({len(calib)} of them calibration), {len(y_test)} held-out test; "
          f"8x8 -> {CFG.resolution}x{CFG.resolution} bilinear, 3 channels, [-1, 1]")

    model = build_torch_model()
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.batch, args.max_shift, args.lr)
    recompute_bn_stats(model, x_train)
    print(f"training: {time.perf_counter() - t0:.1f} s ({args.epochs} epochs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    with torch.no_grad():
        torch_top1 = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(CFG, to_weights(model), args.out / ONNX_NAME)
    split_path = args.out / SPLIT_NAME
    x16_test, x16_calib = x_test.astype(np.float16), x_train[calib].astype(np.float16)
    if not (np.array_equal(x16_test, x_test) and np.array_equal(x16_calib, x_train[calib])):
        raise SystemExit("error: float16 does not hold the inputs exactly")
    with atomic_path(split_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, x_test=x16_test, y_test=y_test, x_calib=x16_calib, y_calib=y_train[calib])

    ours = import_onnx(onnx_path, CFG)
    ours_top1 = float((reference.forward(CFG, ours, x_test).argmax(1) == y_test).mean())
    print(f"held-out top-1: torch {torch_top1:.4f}, import_onnx + reference.forward {ours_top1:.4f} "
          f"({len(y_test)} images)")
    for p in (onnx_path, split_path):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} ({p.stat().st_size / 1024:.0f} KiB)")
    if ours_top1 != torch_top1:
        print("error: the exported model's top-1 differs from torch's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
