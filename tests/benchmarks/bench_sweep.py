"""The shipped ``demo`` sweep (compact CNN, patch size x class weights: 4 trials of 4 epochs) on phantom data, on a
local Ray with every core: trials run, trials stopped early by ASHA, wall time, and the trial-epochs ASHA saved
against the full grid. The same grid without early stopping (FIFO) is run too, for its wall time.

24 MIAS-like phantoms (1024 x 1024), Yu et al.'s ROI dataset recipe. A one-epoch, one-trial sweep runs first so
that neither timed sweep pays for cold caches (TensorFlow's libraries, the shard cache). About 4 minutes on 2 cores;
other processes on the machine only slow it down.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from tests.benchmarks.figures import record


def _dataset(root: Path) -> str:
    from mammoflow.dataset.build import build_dataset
    from mammoflow.preprocess.run import preprocess_records
    from mammoflow.sources import SourceOptions, read_source
    from mammoflow.synth.phantoms import write_mias_dataset

    write_mias_dataset(root / "images", n_images=24, seed=0)
    read_source("mias", SourceOptions(root=root / "images")).write(root / "records")
    preprocess_records(root / "records", "yu2020", root / "pre")
    result = build_dataset(root / "pre", "yu2020", str(root / "ds"))
    counts = result.manifest["counts"]
    print(f"phantom dataset: {json.dumps(counts)}")
    return str(root / "ds")


def _run(spec, data: str, out: Path) -> dict:
    from mammoflow.sweep.runner import run_sweep

    t0 = time.perf_counter()
    summary = run_sweep(spec, {"default": data}, str(out), cache_dir=str(out.parent / "cache"))
    summary["driver_wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def main() -> None:
    import ray

    from mammoflow.sweep.spec import load_spec

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        data = _dataset(root)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            from mammoflow.training.config import load_train_config

            demo = load_train_config("demo").to_dict()
            demo["schedule"]["phases"] = [{**demo["schedule"]["phases"][0], "epochs": 1}]
            _run(load_spec({"name": "warmup", "base": demo, "scheduler": {"name": "fifo"}}), data, root / "warmup")
            asha_spec = load_spec("demo")
            fifo_spec = load_spec({**json.loads(json.dumps(vars(asha_spec))), "name": "demo_fifo",
                                   "scheduler": {"name": "fifo"}})
            fifo = _run(fifo_spec, data, root / "fifo")
            asha = _run(asha_spec, data, root / "asha")
        finally:
            ray.shutdown()
        print(f"demo sweep on {cpus} CPUs, {asha['trials']} trials x up to "
              f"{asha['full_grid_trial_epochs'] // max(asha['trials'], 1)} epochs")
        print(f"  ASHA: {asha['trials']} trials run, {asha['finished']} finished, {asha['stopped_early']} stopped "
              f"early, {asha['failed']} failed; {asha['trial_epochs']} of {asha['full_grid_trial_epochs']} "
              f"trial-epochs run ({asha['trial_epochs_saved']} saved, "
              f"{100 * asha['trial_epochs_saved'] / max(asha['full_grid_trial_epochs'], 1):.0f}%); "
              f"wall {asha['wall_time_s']:.1f} s (trials' own time {asha['trial_time_s']:.0f} s); best {asha['best_trial']} (val_loss {asha['best_val_loss']:.4f})")
        print(f"  full grid (FIFO): {fifo['trial_epochs']} trial-epochs; wall {fifo['wall_time_s']:.1f} s "
              f"(trials' own time {fifo['trial_time_s']:.0f} s); "
              f"best {fifo['best_trial']} (val_loss {fifo['best_val_loss']:.4f})")
        print(f"  ASHA wall time / full grid: {asha['wall_time_s'] / max(fifo['wall_time_s'], 1e-9):.2f}")
        same_best = asha["best_trial"] == fifo["best_trial"]
        record("ASHA trial-epochs / full grid (demo spec)", asha["trial_epochs"], "trial-epochs",
               floor=fifo["trial_epochs"], goal="<= 0.5",
               note=f"same best cell as the full grid: {'yes' if same_best else 'NO'}")
        record("ASHA wall time / full grid (demo spec)", asha["wall_time_s"], "s", floor=fifo["wall_time_s"])


if __name__ == "__main__":
    main()
