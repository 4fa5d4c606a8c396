"""``TrainConfig(compile=True)`` (``cl-replay pretrain --compile``) trains on the same loss as eager mode."""
from __future__ import annotations

import shutil

import pytest
import torch

from cl_replay.models import ModelConfig, build_model
from cl_replay.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile on CPU needs a C++ compiler")


def loss_and_gradients(loss_fn, model, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    loss, _ = loss_fn(x, beta)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_compiled_loss_and_gradients_equal_the_eager_ones(tmp_path):
    import torch._inductor.config as inductor_config

    x = torch.rand(64, 12).bernoulli()
    model = build_model(ModelConfig(input_dim=12, latent_dim=3, hidden=16, categories=3, prior_init="normal"))
    trainer = Trainer(model, TrainConfig(compile=True, warmup=0), tmp_path, x, x, binarize_batches=False,
                      image_shape=None)
    model.train()
    model.start_epoch(3)
    # Eager random numbers inside the compiled graph: the same Gumbel and Gaussian draws in both.
    with inductor_config.patch(fallback_random=True):
        compiled_loss, compiled_grads = loss_and_gradients(trainer.training_loss, model, x, 0.3)
    eager_loss, eager_grads = loss_and_gradients(model.loss, model, x, 0.3)
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5)
    learned = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(compiled_grads) == set(eager_grads) == learned
    for name in learned:
        assert torch.allclose(compiled_grads[name], eager_grads[name], rtol=1e-4, atol=1e-6), name
    trainer.writer.close()
