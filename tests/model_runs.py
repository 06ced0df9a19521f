"""Random-init tiny checkpoints in the runs-folder layout of `r3p train` (for tests that need trained stages'
files, not trained behaviour): motion at 32² heads, a2m on log-mel, htbsr over the motion."""

from __future__ import annotations

import numpy as np


def random_runs(root):
    """A runs folder of random-init tiny checkpoints (motion at 32² heads, a2m on log-mel, htbsr over the motion)."""
    import dataclasses

    import torch

    from preprocessing.synthetic_bfm import synthetic_face_model
    from training import a2m, htbsr, motion
    from training.checkpoint import save_checkpoint
    from training.keypoints import KeypointBasis

    def save(folder, net, meta):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        save_checkpoint(folder, net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 0, meta)

    torch.manual_seed(0)
    small = dict(image_size=32, render_resolution=16, plane_resolution=32, samples_coarse=8, samples_fine=8,
                 width=16, adapter_width=8)
    runs = root / "runs"
    pm = motion.STAGE.params("tiny", small)
    save(runs / "motion-t" / "final", motion.build_motion_head(pm), {"stage": "motion", "params": dataclasses.asdict(pm)})
    pa_ = a2m.A2MStage().params("tiny", {"w_sync": 0.0})
    fm = synthetic_face_model(0, "bfm")
    info = {"audio": "mel", "audio_dim": 80, "audio_mean": np.zeros(80, np.float32),
            "audio_std": np.full(80, 3.0, np.float32), "keypoints": KeypointBasis.from_face_model(fm).to_dict()}
    save(runs / "a2m-t" / "final", a2m.A2MStage().build(pa_, info),
         {"stage": "a2m", "params": dataclasses.asdict(pa_), "info": {"audio": "mel", "audio_dim": 80}})
    ph = htbsr.STAGE.params("tiny", {**small, "work_size": 32, "out_size": 64, "motion": str(runs / "motion-t")})
    save(runs / "htbsr-t" / "final", htbsr.STAGE.build(ph, {}), {"stage": "htbsr", "params": dataclasses.asdict(ph)})
    return runs
