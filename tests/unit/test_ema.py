"""--ema-decay: Ignite's EMAHandler; validation, the best checkpoint, evaluate, predict and export use the average."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events

from conftest import assert_one_error_line, invoke_app, read_scalars
from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.io.checkpoint import train_checkpoints

pytestmark = pytest.mark.usefixtures("torch_threads")
DECAY = 0.8


def test_the_average_follows_every_optimizer_step(tmp_path):
    from ignite_app.train.build import build_run
    from ignite_app.train.loop import close_run

    cfg = Config(dataset="digits", model="mlp", epochs=1, batch_size=256, patience=0, progress=False, device="cpu",
                 ema_decay=DECAY, grad_accum=2, output_dir=str(tmp_path))
    run = build_run(cfg, torch.device("cpu"), echo=lambda line: None)
    average = {k: v.detach().clone() for k, v in run.raw_model.named_parameters()}

    def follow(engine):
        if engine.state.iteration % 2 == 0:  # one optimizer step per 2 iterations
            for k, p in run.raw_model.named_parameters():
                average[k] = DECAY * average[k] + (1 - DECAY) * p.detach()

    run.trainer.add_event_handler(Events.ITERATION_COMPLETED, follow)
    try:
        run.trainer.run(run.train_loader, max_epochs=1, epoch_length=run.epoch_length)
    finally:
        close_run(run)
    ema = dict(run.ema.ema_model.named_parameters())
    assert all(torch.allclose(ema[k], average[k], atol=1e-6) for k in average)
    assert not all(torch.equal(ema[k], p) for k, p in run.raw_model.named_parameters())
    assert run.to_save["ema"] is run.ema.ema_model


def test_validation_best_model_evaluate_predict_and_export_use_the_average(tmp_path):
    run = tmp_path / "run"
    result = invoke_app("train", "--no-progress", "--model", "mlp", "--epochs", "2", "--patience", "0",
                        "--ema-decay", str(DECAY), "--output-dir", str(run))
    assert result.exit_code == 0, result.output + result.stderr
    newest = train_checkpoints(run)[0]
    state = torch.load(newest, weights_only=True)
    assert set(state["ema"]) == set(state["model"])
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    best = next((run / "checkpoints").glob("best_model_*.pt"))
    best_state = torch.load(best, weights_only=True)
    if best.stem.endswith(newest.stem.rsplit("_", 1)[1]):  # the best is the last epoch: the same average
        assert all(torch.equal(best_state["model"][k], state["ema"][k]) for k in state["ema"])

    val_loss = read_scalars(run)["val/loss"][-1][1]
    evaluated = json.loads(invoke_app("evaluate", str(newest), "--json").stdout)
    assert evaluated["loss"] == pytest.approx(val_loss, rel=1e-5)  # validation ran the average too

    exported = invoke_app("export", str(newest), "--output", str(tmp_path / "m.safetensors"))
    assert exported.exit_code == 0, exported.output + exported.stderr
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(tensors[k], state["ema"][k]) for k in state["ema"])

    from ignite_app.tools.inference import load_trained

    used = load_trained(newest, "cpu").model.state_dict()  # the model predict (and evaluate, export) runs
    assert all(torch.equal(used[k], state["ema"][k]) for k in state["ema"])

    changed = invoke_app("train", "--no-progress", "--resume", str(run), "--epochs", "3", "--ema-decay", "0.9")
    assert_one_error_line(changed.exit_code, changed.stderr, changed.output, "--ema-decay cannot change when resuming")


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, True])
def test_a_decay_outside_0_1_is_a_user_error(decay):
    with pytest.raises(UserError, match=r"invalid --ema-decay .*: expected a number between 0 and 1, such as 0.999"):
        Config(ema_decay=decay)
