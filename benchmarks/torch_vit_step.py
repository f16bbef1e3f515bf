"""The PyTorch side of ``benchmarks/train_step.py``: mtljax's hard-parameter-sharing ViT as an eager
PyTorch model, trained the way LibMTL users train one (shared backbone + one linear head per task,
summed cross-entropy losses, ``torch.optim.Adam``).

The network is built to compute the same function as ``mtljax.models.build_model`` with
``backbone='vit'``, ``pool='gap'``, ``head_hidden=0``, so the two train steps do the same arithmetic:

* patches: the ``[B, H, W, C]`` image is cut into ``p × p`` patches flattened in (row, column,
  channel) order — the same reshape/transpose as mtljax's ``ViT`` — then one ``Linear(p²C → D)``;
* learned position embeddings ``[1, N, D]`` added (no class token);
* ``depth`` pre-LayerNorm encoder blocks: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``. Attention has
  one fused ``Linear(D → 3D)`` for queries, keys and values (the same parameters as mtljax's three
  ``DenseGeneral(D → heads × head_dim)``; the fused layout is what timm and torchvision use) and an
  output ``Linear(D → D)``; scores go through ``F.scaled_dot_product_attention`` (PyTorch's fused CPU
  kernel, softmax scale ``1/sqrt(head_dim)``). The MLP is ``Linear(D → M)``, GELU with the **tanh
  approximation** (Flax's ``nn.gelu`` default, which mtljax uses), ``Linear(M → D)``;
* a final LayerNorm, mean over tokens (``pool='gap'``), then one ``Linear(D → classes)`` per task.

LayerNorms use ``eps=1e-6`` (Flax's default). :func:`load_flax_params` copies an mtljax parameter
tree into the module, which is how ``train_step.py`` checks that both models compute the same outputs
before timing them, and :func:`param_count` lets it assert that both have the same number of
parameters.

Mixed precision is ``torch.autocast('cpu', dtype=torch.bfloat16)`` around the forward pass
(parameters and optimizer state stay float32, losses are taken in float32), the counterpart of mtljax's
``config.model.dtype='bfloat16'``.

Run alone: ``.venv-bench/bin/python benchmarks/torch_vit_step.py [--variant S] [--image 32,32,3]``
prints the parameter count and the median step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = {  # as mtljax.models.vit.VARIANTS (repeated here so this file runs without mtljax)
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, d = x.shape
        # [B, N, 3, H, hd] -> three [B, H, N, hd] tensors
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class HpsViT(nn.Module):
    """Shared ViT encoder, global average pooling, one linear head per task."""

    def __init__(self, image_shape, patch: int, width: int, depth: int, heads: int, mlp_dim: int,
                 num_classes: list[int]):
        super().__init__()
        h, w, c = image_shape
        if h % patch or w % patch:
            raise ValueError(f"image {h}x{w} is not a multiple of patch size {patch}")
        self.patch = patch
        self.tokens = (h // patch) * (w // patch)
        self.embed = nn.Linear(patch * patch * c, width)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(depth))
        self.ln_final = nn.LayerNorm(width, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(width, k) for k in num_classes)

    def patches(self, images):
        b, h, w, c = images.shape
        p = self.patch
        x = images.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, self.tokens, p * p * c)

    def forward(self, images):
        x = self.embed(self.patches(images)) + self.pos
        for blk in self.blocks:
            x = blk(x)
        pooled = self.ln_final(x).mean(dim=1)
        return [head(pooled) for head in self.heads]


def build(dims: dict, image_shape, patch: int, num_classes: list[int]) -> HpsViT:
    """``dims``: ``width``, ``depth``, ``num_heads``, ``mlp_dim`` (as ``mtljax.models.vit_dims`` gives)."""
    return HpsViT(image_shape, patch, dims["width"], dims["depth"], dims["num_heads"], dims["mlp_dim"],
                  num_classes)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- weights from mtljax
def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _linear(lin: nn.Linear, kernel, bias):
    """Flax kernels are [in, out]; torch weights are [out, in]."""
    k = np.asarray(kernel, np.float32)
    lin.weight.copy_(_t(k.reshape(-1, k.shape[-1]).T))
    lin.bias.copy_(_t(np.asarray(bias, np.float32).reshape(-1)))


@torch.no_grad()
def load_flax_params(model: HpsViT, params, task_names: list[str]) -> None:
    """Copy an mtljax HPS-ViT parameter tree (``state.params``) into ``model``."""
    bb = params["backbone"]
    _linear(model.embed, bb["embedding"]["kernel"], bb["embedding"]["bias"])
    model.pos.copy_(_t(bb["pos_embedding"]))
    for i, blk in enumerate(model.blocks):
        p = bb[f"block{i}"]
        for ln, name in ((blk.ln1, "ln1"), (blk.ln2, "ln2")):
            ln.weight.copy_(_t(p[name]["scale"]))
            ln.bias.copy_(_t(p[name]["bias"]))
        a = p["attn"]
        d = blk.attn.qkv.in_features
        # query/key/value kernels are [D, heads, head_dim]: flatten to [D, D] and stack along outputs
        w = np.concatenate([np.asarray(a[n]["kernel"], np.float32).reshape(d, d) for n in ("query", "key", "value")],
                           axis=1)
        b = np.concatenate([np.asarray(a[n]["bias"], np.float32).reshape(d) for n in ("query", "key", "value")])
        blk.attn.qkv.weight.copy_(_t(w.T))
        blk.attn.qkv.bias.copy_(_t(b))
        out = np.asarray(a["out"]["kernel"], np.float32)  # [heads, head_dim, D]
        blk.attn.proj.weight.copy_(_t(out.reshape(-1, out.shape[-1]).T))
        blk.attn.proj.bias.copy_(_t(a["out"]["bias"]))
        _linear(blk.fc1, p["mlp"]["fc1"]["kernel"], p["mlp"]["fc1"]["bias"])
        _linear(blk.fc2, p["mlp"]["fc2"]["kernel"], p["mlp"]["fc2"]["bias"])
    model.ln_final.weight.copy_(_t(bb["ln_final"]["scale"]))
    model.ln_final.bias.copy_(_t(bb["ln_final"]["bias"]))
    for head, name in zip(model.heads, task_names):
        h = params[f"heads_{name}"]["out"]
        _linear(head, h["kernel"], h["bias"])


# -------------------------------------------------------------------------------------------- step
def make_step(model: HpsViT, images: np.ndarray, labels: list[np.ndarray], *, lr: float = 1e-3,
              bf16: bool = False):
    """One complete eager train step (zero grads, forward, summed task losses, backward, Adam)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    ys = [torch.from_numpy(np.asarray(y)).long() for y in labels]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = sum(F.cross_entropy(z.float(), y) for z, y in zip(logits, ys))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def versions() -> dict:
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="Ti", choices=sorted(VARIANTS))
    p.add_argument("--image", default="16,16,1", help="H,W,C")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.image.split(","))
    classes = [10, 10, 19]
    torch.manual_seed(0)
    model = build(VARIANTS[args.variant], shape, args.patch, classes)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *shape), dtype=np.float32)
    ys = [rng.integers(0, k, args.batch) for k in classes]
    step = make_step(model, x, ys, bf16=args.bf16)
    step()
    ts = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    print(versions())
    print(f"ViT-{args.variant} {shape} patch {args.patch} batch {args.batch} bf16={args.bf16}: "
          f"{param_count(model):,} parameters, {1e3 * statistics.median(ts):.1f} ms/step")


if __name__ == "__main__":
    main()
