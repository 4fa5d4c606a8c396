"""A small run in its own process that kills itself with SIGKILL at a chosen point (resume tests).

    python killable_run.py cl RUN_DIR KILL_EXPERIENCE [--resume]
        a 4-experience synthetic stream with CP-VAE replay trained in a worker process; prints the
        accuracy matrix as JSON (KILL_EXPERIENCE 0: never killed)
    python killable_run.py pretrain TRAIN_SIZE KILL_EPOCH -- PRETRAIN ARGS...
        ``cl-replay pretrain`` with ``cl_replay.data.MNIST_TRAIN_SIZE = TRAIN_SIZE`` (tiny IDX files)
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def kill_on_call(obj, name: str, call: int) -> None:
    """Replace ``obj.name`` by a wrapper that SIGKILLs this process on its ``call``-th call."""
    original, calls = getattr(obj, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


def continual(run_dir: str, kill_experience: int, resume: bool) -> None:
    from strategies.replay import ReplayStrategy
    from strategies.run import run_experiment
    from test_strategies import synthetic_stream, tiny_cl_config, tiny_model_config

    if kill_experience:
        before = ReplayStrategy._before_training_exp

        def before_training_exp(self, **kwargs):
            before(self, **kwargs)
            if self.t == kill_experience:  # SIGKILL at the 4th of the experience's 8 iterations
                kill_on_call(self, "optimizer_step", 4)

        ReplayStrategy._before_training_exp = before_training_exp
    cl = tiny_cl_config(Path(run_dir).parent, out=run_dir, iterations=8, parallel_generator=True)
    results = run_experiment(cl, tiny_model_config(), stream=synthetic_stream(4), echo=lambda *_: None, resume=resume)
    print(json.dumps(results["accuracy_matrix"]))


def pretrain(train_size: int, kill_epoch: int, args: list[str]) -> None:
    from cl_replay import data
    from cl_replay.cli import main
    from cl_replay.trainer import Trainer

    data.MNIST_TRAIN_SIZE = train_size
    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == kill_epoch:  # SIGKILL at the 2nd step of the epoch
            kill_on_call(self, "training_loss", 2)
        return original(self, epoch)

    Trainer.train_epoch = train_epoch
    main(args, standalone_mode=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "cl":
        continual(sys.argv[2], int(sys.argv[3]), "--resume" in sys.argv)
    else:
        pretrain(int(sys.argv[2]), int(sys.argv[3]), sys.argv[sys.argv.index("--") + 1:])
