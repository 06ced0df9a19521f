"""The per-worker training loop every stage runs under Ray Train (the runner knows no stage by name).

Data: every worker reads the whole (pre-shuffled, materialised) training dataset in the same
order and keeps its own slice of each global batch (`rank · B/W … (rank + 1) · B/W`). The random
parts of a batch (negatives, noise) are drawn for the whole global batch from a generator seeded
by (seed, step), so W workers with DDP's mean of gradients compute the same update as one worker
with the whole batch, and a resumed run replays exactly the batches an uninterrupted one sees
(the epoch and the position in it follow from the step).

Rank 0 alone writes: checkpoints (`training.checkpoint`), MLflow metrics (the run is created by
the job; the worker logs to it by id), progress lines. Every worker calls `ray.train.report` at
the same steps (it is a barrier); only rank 0 attaches a checkpoint.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import torch

from training.checkpoint import load_state, load_weights, read_meta, save_checkpoint


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def _generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


class _Metrics:
    """MLflow metric logging by run id from world rank 0 (batched; silent when no run is configured)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool):
        self.client = None
        if enabled and tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in values.items()
                                                     if v is not None and math.isfinite(float(v))])


def _to_tensors(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).float() for k, v in batch.items()}


def _part(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    b = next(iter(batch.values())).shape[0]
    lo, hi = rank * b // world, (rank + 1) * b // world
    return {k: v[lo:hi] for k, v in batch.items()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: build the stage's model, resume if a checkpoint exists, train, checkpoint."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from training.registry import get_stage

    torch.set_num_threads(int(config.get("threads", 1)))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    stage = get_stage(config["stage"])
    p = stage.params_from_dict(config["params"])
    info, seed = config["info"], int(config["seed"])
    if p.batch_size % world:
        raise ValueError(f"training.{stage.name}.batch_size {p.batch_size} does not split over {world} workers")
    torch.manual_seed(seed)
    model = stage.build(p, info)
    frozen = stage.frozen(p, info)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, p.lr_factor)
    step = 0
    best: float | None = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            load_weights(d, model)
            step = load_state(d, opt, sched)
            if stage.best_metric:
                best = read_meta(d).get("metrics", {}).get(f"best_{stage.best_metric[0]}")
    elif config.get("init_from"):
        load_weights(config["init_from"], model)
    else:
        stage.init_weights(model, p)
    last_ckpt_step = step if ckpt is not None else None
    if world > 1:
        model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True} if stage.ddp_find_unused else None)
    core = model.module if hasattr(model, "module") else model

    lead = rank == 0
    metrics_log = _Metrics(config.get("tracking_uri"), config.get("run_id"), lead)
    n_train, b = int(config["n_train"]), p.batch_size
    per_epoch = n_train // b
    train_it = ray.train.get_dataset_shard("train")
    val_batches: list[dict[str, torch.Tensor]] = []
    if lead and config.get("has_val"):
        vgen = _generator(seed, 0, salt=17)
        for i, vb in enumerate(ray.train.get_dataset_shard("val").iter_torch_batches(
                batch_size=b, drop_last=False, dtypes=torch.float32)):
            if i >= int(config.get("val_batches", 8)):
                break
            val_batches.append(stage.prepare(_to_tensors(vb), i, vgen, p))
    elif config.get("has_val"):
        ray.train.get_dataset_shard("val")  # every worker takes its shard handle; only rank 0 reads it

    log_every, ckpt_every = int(config["log_every"]), int(config["checkpoint_every"])
    nan_step = config.get("inject_nan_step")
    t_start, s_start = time.perf_counter(), step
    window: dict[str, float] = {}
    n_window = 0

    def checkpoint_and_report(val_metrics: dict[str, float]) -> None:
        nonlocal last_ckpt_step
        report = {"step": step, **val_metrics}
        if lead:
            with tempfile.TemporaryDirectory() as tmp:
                meta = {**config["meta"], "stage": stage.name, "params": config["params"],
                        "info": {k: v for k, v in info.items() if k in ("audio", "audio_dim")},
                        "metrics": val_metrics}
                save_checkpoint(tmp, core, opt, sched, step, meta)
                ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report, checkpoint=None)
        last_ckpt_step = step

    if per_epoch == 0:
        raise ValueError(f"{n_train} training examples are fewer than one batch of {b}")
    while step < p.steps:
        epoch, skip = divmod(step, per_epoch)
        for i, batch in enumerate(train_it.iter_torch_batches(batch_size=b, drop_last=True, dtypes=torch.float32)):
            if i < skip:
                continue
            if step >= p.steps or i >= per_epoch:
                break
            t0 = time.perf_counter()
            full = stage.prepare(_to_tensors(batch), step, _generator(seed, step), p)
            model.train()
            loss, terms = stage.loss(model, _part(full, rank, world), step, p, frozen)
            if nan_step is not None and step == int(nan_step):
                loss = loss * float("nan")  # fault injection (tests): the run must stop, checkpoints intact
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"stage {stage.name}: loss is {float(loss)} at step {step} (terms {terms}); nothing was "
                    f"updated. Last good checkpoint: step {last_ckpt_step}. Lower training.{stage.name}.lr or "
                    "check the data, then re-run the same command to resume from that checkpoint")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip_grad)
            opt.step()
            sched.step()
            step += 1
            for k, v in {"loss": float(loss), **terms}.items():
                window[k] = window.get(k, 0.0) + v
            n_window += 1
            if step % log_every == 0 or step == p.steps:
                elapsed = time.perf_counter() - t_start
                sps = (step - s_start) * b / max(elapsed, 1e-9)
                eta = (p.steps - step) * b / max(sps, 1e-9)
                avg = {k: v / n_window for k, v in window.items()}
                metrics_log.log({**avg, "lr": opt.param_groups[0]["lr"], "samples_per_s": sps,
                                 "step_seconds": time.perf_counter() - t0}, step)
                if lead:
                    print(f"[r3p train {stage.name}] step {step}/{p.steps} loss {avg['loss']:.4f} "
                          f"{sps:.0f} samples/s ETA {eta:.0f} s", flush=True)
                window, n_window = {}, 0
            if step % ckpt_every == 0 or step == p.steps:
                val = stage.validate(core.eval(), val_batches, p, frozen) if (lead and val_batches) else {}
                if val:
                    metrics_log.log(val, step)
                    key = stage.best_metric
                    if key and key[0] in val:
                        v = val[key[0]]
                        best = v if best is None or (v > best if key[1] else v < best) else best
                        val = {**val, f"best_{key[0]}": best}
                checkpoint_and_report(val)
