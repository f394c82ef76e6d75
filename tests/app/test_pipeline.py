"""The passes after `fit` (calibration, the test split and its report) run through the trainer's predict loop."""

from pathlib import Path

import torch
from conftest import tiny_data, tiny_model, tiny_trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from tl_lightning.app.pipeline import train_and_evaluate
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.features import extract_features
from tl_lightning.models.outputs import predict_outputs


class CountingBar(TQDMProgressBar):
    """The trainer's own progress bar, counting the predict passes and the images they show."""

    def __init__(self):
        super().__init__()
        self.passes, self.images = 0, 0

    def on_predict_start(self, trainer, pl_module):
        super().on_predict_start(trainer, pl_module)
        self.passes += 1

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self.images += len(batch[1])


def test_calibration_and_the_test_split_go_through_the_trainers_predict_loop(split_folder: Path, tmp_path: Path):
    model = tiny_model()
    bar = CountingBar()
    trainer = tiny_trainer(max_epochs=1, enable_progress_bar=True, callbacks=[LayerFinetuning(), bar])
    metrics = train_and_evaluate(model, tiny_data(split_folder, model), trainer, tmp_path)
    assert (bar.passes, bar.images) == (2, 9 + 9)  # validation for the temperature, then the test split
    assert metrics["test/samples"] == 9 and (tmp_path / "report.md").is_file()


def test_outputs_through_the_predict_loop_equal_a_plain_pass_in_order_and_leave_modes_as_they_were(
    split_folder: Path,
):
    model = tiny_model().train()
    data = tiny_data(split_folder, model)
    through_loop = predict_outputs(tiny_trainer(), model, data.eval_dataloader("test"))
    plain = extract_features(model, data.eval_dataloader("test"))
    torch.testing.assert_close(through_loop[0], plain[0])
    assert torch.equal(through_loop[1], plain[1]) and model.training
    assert not through_loop[0].is_inference()  # a temperature is fitted on these with autograd
