"""APViT recipes and task: the paper recipe (``apvit``) and the CPU demo (``synthetic``, the main job).

| recipe | model | what it reproduces |
|---|---|---|
| ``apvit`` | ``apvit`` | SGD 1e-3 / momentum 0.9 / wd 5e-4 on every parameter, cosine to 0 by epoch, 40 epochs, batch 128, grad clip 10, plain CE, class-balanced repeat sampler (thr 0.15, sqrt), SyncBN under DDP, seed 25235 (the official config) |
| ``synthetic`` | ``apvit_tiny`` | the demo: the small APViT on the built-in synthetic set, sized to finish in minutes on a 2-core CPU |
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fastfer.train.task import ClassifierTask

APVIT = dict(
    model="apvit", transform="apvit", epochs=40, batch_size=128, optimizer="sgd", lr=1e-3, momentum=0.9,
    weight_decay=5e-4, no_decay=False, scheduler="cosine", sched_by="epoch", min_lr=0.0, grad_clip=10.0,
    loss="ce", sampler="class_balanced", oversample_thr=0.15, oversample_method="sqrt", sync_bn=True,
    seed=25235,
)

# The demo, sized for a 2-core CPU (measured; see the README). Everything model-side is a keyword argument of
# ``apvit_tiny``: 64² input → 8×8 trunk grid, APP keeps 40 of 64 positions. Two choices make it learn in
# minutes: the synthetic faces are drawn at difficulty 0.5 (half the nuisance range), and the IR trunk gets deep
# supervision (``aux_trunk_weight``: a training-only linear classifier on its flattened output map). Without it
# the shallow tiny trunk left the whole model at chance for 6 epochs; with a classifier on the trunk's spatial
# *mean* instead of the whole map it still did (the tiny trunk is nearly linear, so its mean carries little
# expression); with the map the model passes 90 % validation accuracy by epoch 9.
SYNTHETIC = dict(
    model="apvit_tiny",
    # head_init_std: with the paper's zero-initialised head no gradient reaches the ViT until the head has grown,
    # and the ViT left chance level at epoch 3-7 depending on the thread count (2 threads, a quiet 2-core VM:
    # still 28 % at epoch 9). A 0.02 trunc-normal head left chance at epoch 3 there (measured).
    model_kwargs=dict(img_size=64, patch_keep=40, head_init_std=0.02),
    data="synthetic",
    data_kwargs=dict(train_size=4200, val_size=700, test_size=1400, seed=0, difficulty=0.5),
    transform="light",
    epochs=16,  # 24 epochs at lr 1e-3 gave 97.7 % (12: 93.4 %); the main job should stay within a few minutes on 2 cores
    batch_size=64,
    optimizer="adamw",
    lr=3e-3,  # 1e-3 left the ViT at chance for 8+ epochs in some runs (69.6 % after 16); 3e-3: 96.7 % val
    weight_decay=0.05,
    no_decay=True,
    scheduler="cosine",
    sched_by="step",
    warmup_epochs=0.5,
    grad_clip=5.0,
    aux_trunk_weight=1.0,
    sampler="shuffle",
    seed=0,
    # fp32 even where amp auto would pick bf16: measured on a Sapphire Rapids (AMX) VM, bf16 autocast left the
    # tiny ViT at chance 3+ epochs longer (fp32 left it at epoch 4, bf16 at epoch 6-7; one bf16 run still at
    # chance after 8 of 16) for no real speed gain on a 0.7 M-parameter 64² model (about 250 vs 264 img/s).
    amp="off",
)


class ApvitTask(ClassifierTask):
    """APViT: cross-entropy (optionally with the trunk head), and the APP/ATP overlay of a few faces."""

    @torch.no_grad()
    def write_overlay(self, dataset, count: int, path: str | os.PathLike, mean, std, device) -> Optional[str]:
        """APP score map + kept patches (and the tokens alive after each pooling block) for ``count`` samples
        of ``dataset`` (a normalised-tensor dataset), one per class first; :func:`fastfer.viz.plot_app_overlay`."""
        if count <= 0 or len(dataset) == 0:
            return None
        from fastfer.train.data import targets_of
        from fastfer.train.evaluate import denormalize
        from fastfer.viz import plot_app_overlay

        targets = targets_of(dataset)
        first: dict[int, int] = {}
        for i, t in enumerate(targets):
            first.setdefault(int(t), i)
        picked = sorted(first.values())[:count]
        picked += [i for i in range(len(targets)) if i not in picked][: count - len(picked)]
        xs, ys = zip(*(dataset[i] for i in picked))
        model = self.model
        was_training = model.training
        model.eval()
        x = torch.stack(list(xs)).to(device)
        tokens, details = model.forward_features(x, return_details=True)
        pred = model.forward_head(tokens).argmax(1).cpu().tolist()
        model.train(was_training)
        names = self.label_names
        titles = [f"true {names[int(t)]} / pred {names[p]}" for t, p in zip(ys, pred)]
        return plot_app_overlay(denormalize(x, mean, std), details["app_scores"].float().cpu(),
                                details["app_index"].cpu(), os.fspath(path),
                                kept_per_block=[p.cpu() for p in details["token_positions"]], titles=titles,
                                max_images=count)
