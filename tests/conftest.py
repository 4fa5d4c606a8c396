import os
from pathlib import Path

import pytest
import torch

REAL_DATA = Path(os.environ.get("CL_REPLAY_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture
def real_data_root() -> Path:
    """The read-only real datasets beside the checkout; tests that need them skip without them."""
    if not (REAL_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found under {REAL_DATA} (set CL_REPLAY_TEST_DATA)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def interrupt_at_epoch(monkeypatch):
    """``interrupt_at_epoch(e)``: the trainer raises KeyboardInterrupt (as Ctrl-C would) when it
    starts epoch e; ``interrupt_at_epoch(None)`` trains normally again."""
    from cl_replay.trainer import Trainer

    original = Trainer.train_epoch

    def interrupt(at: int | None) -> None:
        def interrupted(self, epoch):
            if epoch == at:
                raise KeyboardInterrupt
            return original(self, epoch)

        monkeypatch.setattr(Trainer, "train_epoch", original if at is None else interrupted)

    return interrupt
