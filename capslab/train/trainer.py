"""The training loop, top to bottom (in the spirit of nanoGPT's train.py).

seed everything -> data in memory -> model, loss, optimizer -> (resume) -> for each epoch: shuffled,
randomly shifted batches; loss = classification loss + reconstruction term; per-step learning rate;
then evaluate on the test split, log metrics.jsonl, draw reconstructions.png, save a checkpoint.

Every random draw of the data pipeline comes from one ``torch.Generator`` that the checkpoint saves,
with the torch / numpy / python RNG states, so a resumed run repeats a straight run bit for bit.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from capslab.build import build, build_loss
from capslab.recipe.loader import dump_recipe
from capslab.recipe.schema import Recipe
from capslab.routing import backends
from capslab.train import distributed
from capslab.train.data import extra_test_sets, load_split, steps_per_epoch, train_batches
from capslab.train.divergence import DivergenceGuard
from capslab.train.evaluate import autocast, evaluate
from capslab.train.figures import save_reconstructions
from capslab.train.objective import correct, total_loss
from capslab.train.optim import build_optimizer, lr_at, set_lr
from capslab.train.report import Meter, MetricsLog, epoch_line, make_progress
from capslab.train.setup import check_fits, make_dataset, make_model, resolve_device, seed_everything
from capslab.train.state import Counters, restore_run, save_run


def train(
    recipe: Recipe, run_dir: str | Path, *, resume: Path | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; ``resume``: a checkpoint directory to continue from exactly.

    Returns the last evaluation record (what metrics.jsonl holds for it).
    """
    dist = distributed.from_env(recipe.train.device)  # torchrun's process group, or one process
    try:
        with backends.use(recipe.train.routing_backend):  # the debugging switch of capslab.routing.backends
            return _train(recipe, Path(run_dir), resume, console, dist)
    finally:
        distributed.close(dist)


def _train(
    recipe: Recipe, run_dir: Path, resume: Path | None, console: Console | None, dist: distributed.Dist
) -> dict[str, Any]:
    cfg = recipe.train
    console = console or Console(stderr=True)
    if not dist.main:  # rank 0 reports; the others train in silence
        console = Console(file=io.StringIO())
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(recipe.seed)
    device = distributed.device_for(dist, resolve_device(cfg.device))

    # data: whole splits in memory as uint8; each batch is cut, shifted and moved to the device
    dataset = make_dataset(recipe)
    train_set = load_split(dataset, "train", cfg.limit_train)
    test_set = load_split(dataset, "test", cfg.limit_test, cfg.crop)
    check_fits(recipe, dataset.info)
    also = extra_test_sets(recipe, dataset.info)  # name -> Split: test_error@name at each evaluation

    # model (seeded above, so its initial weights follow recipe.seed), loss, optimizer
    model = make_model(recipe, dataset.info).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
    wrapped = distributed.wrap(model, dist, device)  # DistributedDataParallel under torchrun
    forward = torch.compile(wrapped) if cfg.compile else wrapped  # checkpoints always save the plain `model`
    loss_fn = build_loss(recipe.loss.as_dict()).to(device)
    optimizer = build_optimizer(model, recipe.optimizer)
    generator = torch.Generator().manual_seed(recipe.seed)  # batch order and shifts

    counters = Counters()
    if resume is not None:
        counters = restore_run(resume, recipe, model, optimizer, generator)
    if dist.main:
        dump_recipe(
            recipe,
            run_dir / "recipe.yaml",
            header=f"resolved recipe of this run; rerun: capslab train {run_dir / 'recipe.yaml'}",
        )
    loggers = [build("logger", section.as_dict(), run_dir) for section in recipe.loggers] if dist.main else []
    log = MetricsLog(
        run_dir / "metrics.jsonl" if dist.main else None,
        resume_step=counters.step if resume is not None else None,
        loggers=loggers,
    )
    log.params(recipe.to_dict())
    with log:  # the trackers are flushed and closed however the run ends
        per_epoch = steps_per_epoch(len(train_set), cfg.batch_size)
        total_steps = per_epoch * cfg.epochs
        console.print(
            f"[bold]capslab train[/] {recipe.model.name} + {recipe.routing.name} routing on "
            f"{recipe.data.name} ({len(train_set)} train / {len(test_set)} test), {cfg.epochs} epochs of "
            f"{per_epoch} steps, device {device}; run dir {run_dir}",
            highlight=False,
            soft_wrap=True,
        )
        if counters.epoch >= cfg.epochs:
            console.print(f"already trained {counters.epoch} epochs; raise train.epochs to continue")
        record: dict[str, Any] = {}
        guard = DivergenceGuard(cfg.nonfinite, cfg.max_skipped, run_dir)
        guard.skipped = int(counters.extra.get("skipped_steps", 0))

        def log_window(window: Meter, lr: float, ips: float, epoch: float) -> Meter:
            """One train record of the steps since the last one; returns a fresh window."""
            log.write(
                {
                    "kind": "train",
                    "step": counters.step,
                    "lr": lr,
                    "loss": window.loss,
                    "accuracy": window.accuracy,
                    "img_per_s": round(ips, 1),
                    "epoch": round(epoch, 4),
                }
            )
            return Meter()

        with make_progress(console) as progress:
            task = progress.add_task(
                "train",
                total=total_steps,
                completed=counters.step,
                epoch=f"{counters.epoch + 1}/{cfg.epochs}",
                loss=0.0,
                acc=0.0,
                ips=0.0,
            )
            for epoch in range(counters.epoch, cfg.epochs):
                model.train()
                t0 = time.perf_counter()
                epoch_meter, window = Meter(), Meter()  # this epoch; the steps since the last log record
                for images, targets, sources in train_batches(
                    train_set, cfg.batch_size, cfg.shift, generator, cfg.crop
                ):
                    images, targets, sources, share = distributed.shard(dist, images, targets, sources)
                    images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                    sources = sources.to(device, non_blocking=True) if sources is not None else None
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    lr = lr_at(counters.step, recipe.optimizer.lr, recipe.scheduler, total_steps)
                    set_lr(optimizer, lr)
                    with autocast(device, cfg.bf16):
                        out = forward(images, targets)  # targets mask the decoder's input while training
                        loss = total_loss(out, images, targets, loss_fn, recipe.reconstruction, counters.step, sources)
                    optimizer.zero_grad(set_to_none=True)
                    (loss * share if share != 1.0 else loss).backward()  # DDP averages the ranks' gradients
                    if guard.skip(loss, model, counters.step + 1, epoch + 1):  # NaN / inf: this update is dropped
                        counters.extra["skipped_steps"] = guard.skipped
                        progress.update(task, advance=1)
                        continue
                    optimizer.step()
                    counters.step += 1

                    batch = (len(targets), loss.item(), correct(out.scores.detach().float(), targets))
                    epoch_meter.add(*batch)
                    window.add(*batch)
                    ips = epoch_meter.n / (time.perf_counter() - t0)
                    progress.update(task, advance=1, loss=epoch_meter.loss, acc=epoch_meter.accuracy, ips=ips)
                    if counters.step % cfg.log_every == 0:
                        window = log_window(window, lr, ips, epoch + epoch_meter.n / len(train_set))
                if window.n:  # at least one train record per epoch, however large log_every is
                    window = log_window(window, lr, ips, epoch + epoch_meter.n / len(train_set))
                train_s = time.perf_counter() - t0

                # evaluate on the held-out split, then record, draw and checkpoint
                test = evaluate(
                    model,
                    test_set,
                    device=device,
                    batch_size=cfg.eval_batch_size,
                    loss_fn=loss_fn,
                    recon=recipe.reconstruction,
                    step=counters.step,
                    bf16=cfg.bf16,
                    channels_last=cfg.channels_last,
                    diagnostics=recipe.diagnostics,
                )
                counters.epoch = epoch + 1
                counters.elapsed_s += time.perf_counter() - t0
                record = {
                    "kind": "eval",
                    "step": counters.step,
                    "epoch": counters.epoch,
                    "lr": lr,
                    "train_loss": epoch_meter.loss,
                    "train_accuracy": epoch_meter.accuracy,
                    "test_loss": test.pop("loss"),
                    "test_accuracy": test.pop("accuracy"),
                    "test_error": test.pop("error"),
                    "img_per_s": round(epoch_meter.n / train_s, 1),
                    "epoch_s": round(time.perf_counter() - t0, 2),
                    "elapsed_s": round(counters.elapsed_s, 2),
                    **({"skipped_steps": guard.skipped} if guard.skipped else {}),
                    **{k: v for k, v in test.items() if k != "examples"},
                }
                for name, split in also.items():
                    extra = evaluate(model, split, device=device, batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
                    record[f"test_error@{name}"] = extra["error"]
                log.write(record)
                progress.console.print(epoch_line(record, cfg.epochs), highlight=False, soft_wrap=True)
                if dist.main:  # one writer: the ranks hold the same weights
                    if save_reconstructions(model, test_set, run_dir / "reconstructions.png", device):
                        log.image("reconstructions", run_dir / "reconstructions.png", counters.step)
                    save_run(run_dir, recipe, model, optimizer, generator, counters, record)
                progress.update(task, epoch=f"{min(counters.epoch + 1, cfg.epochs)}/{cfg.epochs}")
                if cfg.stop_at_accuracy is not None and record["test_accuracy"] >= cfg.stop_at_accuracy:
                    progress.console.print(
                        f"stopped: test accuracy {record['test_accuracy']:.2%} reached train.stop_at_accuracy "
                        f"{cfg.stop_at_accuracy:.2%} after epoch {counters.epoch}"
                    )
                    break
        return record
