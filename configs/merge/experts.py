"""Task experts for model merging: the pretrained factors ViT (``configs/pretrain.py``) fully fine-tuned
on one task each, and the multi-task model trained on all of them at once (the reference merging aims at).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain      # once: the pretrained start
    for t in shape colour count texture background size pos_x pos_y; do
      mtljax train --config=configs/merge/experts.py:$t                   # -> runs/merge/expert_$t
    done
    mtljax train --config=configs/merge/experts.py:multitask               # -> runs/merge/multitask
    mtljax merge --pretrained=runs/pretrain --experts=runs/merge/expert_shape,runs/merge/expert_colour,... \
        --multitask=runs/merge/multitask --method=ties --workdir=runs/merge/ties
    mtljax merge ... --sweep --workdir=runs/merge/sweep                    # every method, table + bar chart

Tasks (``TASKS``, eight, all of ``mtljax.data.factors`` but orientation, which this backbone does not
learn): ``shape`` (6-way), ``colour`` (8), ``count`` (4), ``texture`` (4), ``background`` (5) and the
regressions ``size``, ``pos_x``, ``pos_y`` (MSE). Shape, colour and size were the pretraining tasks;
the others are new to the backbone. The digits of ``multi_digits`` (``:left``, ``:right``) are drawn on
the default 16×16 canvas enlarged to 32×32 and repeated as RGB (``config.data.upscale = 2``,
``channels = 3``) so the same ViT reads them, and experts of theirs merge with factor experts (the
merged model's data is then a mixture); but 300 steps from this backbone reach only 0.16–0.19 accuracy
(chance 0.10), so they are not among ``TASKS``.

``:<task>``: start from ``runs/pretrain`` (``config.init.checkpoint``; the task's head is new unless the
pretrained run has one of that name), train every parameter for 300 steps of batch 64, AdamW 3e-4
(cosine, 30 warm-up steps; a small learning rate keeps the task vectors small). ``:lora_<task>``: the
same task with per-task LoRA (``configs/adapt_lora.py``'s modules: query and value, rank 4) on the
frozen backbone, the experts PHATGOOSE routes among. ``:multitask``: all eight tasks at once, 600 steps
of batch 128.
"""

from mtljax.config import base_config

FACTOR_TASKS = ("shape", "colour", "count", "texture", "background", "size", "pos_x", "pos_y")
DIGIT_TASKS = ("left", "right")
TASKS = FACTOR_TASKS


def factors_data(tasks=FACTOR_TASKS) -> dict:
    return dict(name="factors", image_size=32, num_train=10_000, num_test=1_000, max_objects=4,
                pixel_noise=0.02, shots=0, seed=0, tasks=tuple(tasks))


def digits_data(tasks=DIGIT_TASKS) -> dict:
    return dict(name="multi_digits", image_size=32, upscale=2, channels=3, jitter=3, test_fraction=0.3,
                num_train=10_000, num_test=1_000, seed=0, tasks=tuple(tasks))


def _base(workdir: str):
    c = base_config()
    c.workdir = workdir
    c.model.vit.update(patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=128, pool="gap")  # pretrain.py's
    c.init.checkpoint = "runs/pretrain"
    c.data.batch_size = 64
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 30
    c.train.steps = 300
    c.train.eval_every = c.train.checkpoint_every = 300
    c.train.log_every = 100
    c.train.keep_checkpoints = 1
    return c


def get_config(arg=None):
    arg = arg or "shape"
    lora = arg.startswith("lora_")
    task = arg[len("lora_"):] if lora else arg
    if task == "multitask" and not lora:
        c = _base("runs/merge/multitask")
        c.data.update(factors_data(TASKS))
        c.data.batch_size = 128
        c.train.steps = 600
        c.train.eval_every = c.train.checkpoint_every = 600
        return c
    if task not in FACTOR_TASKS + DIGIT_TASKS:
        raise ValueError(f"configs/merge/experts.py: unknown argument {arg!r}; use a task "
                         f"({', '.join(FACTOR_TASKS + DIGIT_TASKS)}), lora_<task> or multitask")
    c = _base(f"runs/merge/{'lora' if lora else 'expert'}_{task}")
    c.data.update(factors_data((task,)) if task in FACTOR_TASKS else digits_data((task,)))
    if lora:
        c.model.peft.method = "lora"
        c.optim.trainable = ("lora", "^heads_")
        c.optim.learning_rate = 3e-3
    return c
