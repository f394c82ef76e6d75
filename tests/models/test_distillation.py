from pathlib import Path

import pytest
import torch
from conftest import fit_with_checkpoints, tiny_model

from tl_lightning.models.losses import distillation_loss
from tl_lightning.models.module import TransferClassifier


def test_distillation_loss_blends_soft_and_hard_terms():
    student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    hard = torch.tensor(1.5)
    assert distillation_loss(student, teacher, hard, temperature=4.0, alpha=0.0) == hard
    assert distillation_loss(teacher, teacher, hard, temperature=4.0, alpha=1.0).abs() < 1e-6  # same logits: no KL
    assert distillation_loss(student, teacher, hard, temperature=4.0, alpha=1.0) > 0


def test_a_student_learns_from_a_teacher_checkpoint_without_carrying_it(split_folder: Path, tmp_path: Path):
    fit_with_checkpoints(tiny_model(image_size=32), split_folder, tmp_path / "teacher", max_epochs=1)
    teacher_path = tmp_path / "teacher" / "best.ckpt"
    student = TransferClassifier(
        "test_resnet",
        num_classes=3,
        class_names=["cat", "dog", "fox"],
        pretrained=False,
        image_size=48,
        distillation={"teacher_checkpoint": str(teacher_path)},
    )
    assert not any(k.startswith("_teacher") for k in student.state_dict())
    x = torch.randn(2, 3, 48, 48)
    assert student.to_teacher_input(x).shape == (2, 3, 32, 32)  # resized to what the teacher was trained on
    fit_with_checkpoints(student, split_folder, tmp_path / "student", max_epochs=1)
    teacher_path.unlink()  # a trained student must load without its teacher
    loaded = TransferClassifier.load_from_checkpoint(tmp_path / "student" / "last.ckpt")
    assert loaded.hparams.distillation["teacher_checkpoint"] is None and loaded.teacher is None


def test_teacher_input_undoes_the_students_normalisation():
    student = tiny_model()
    student.data_config = student.data_config | {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    teacher = tiny_model()
    teacher.data_config = teacher.data_config | {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    student._teachers = [teacher]
    raw = torch.rand(1, 3, 32, 32)
    as_student = (raw - 0.5) / 0.5
    expected = (raw - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    assert torch.allclose(student.to_teacher_input(as_student), expected, atol=1e-6)


def test_teacher_errors_name_the_problem(split_folder: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"Teacher checkpoint '.*nowhere\.ckpt' does not exist"):
        tiny_model(distillation={"teacher_checkpoint": str(tmp_path / "nowhere.ckpt")})
    fit_with_checkpoints(tiny_model(), split_folder, tmp_path / "t", max_epochs=1)
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['fox'\]; only in this run: \['owl'\]"):
        tiny_model(
            class_names=["cat", "dog", "owl"], distillation={"teacher_checkpoint": str(tmp_path / "t" / "best.ckpt")}
        )


@pytest.mark.slow
def test_distillation_run_on_digits_trains_a_student_from_a_teacher_checkpoint(tmp_path: Path):
    from conftest import FAST, compose_train

    from tl_lightning.app.train import run

    run(compose_train([f"paths.output_dir={tmp_path / 'teacher'}", *FAST]))  # Lite0 on digits, a few batches
    teacher = tmp_path / "teacher" / "checkpoints" / "model.ckpt"
    student = run(
        compose_train(
            [
                f"paths.output_dir={tmp_path / 'student'}",
                *FAST,
                "backbone=test_resnet",
                "finetuning=full",
                f"model.distillation.teacher_checkpoint={teacher}",
            ]
        )
    )
    assert 0.0 <= student["test/acc"] <= 1.0 and student["weights"] == "random-init"
    saved = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["distillation"]["teacher_checkpoint"] == str(teacher)
    assert sum(v.numel() for v in saved["state_dict"].values()) < 1_000_000  # the Lite0 teacher is not inside
    # The teacher is what changes the student's training loss: without it, the same batch gives plain cross-entropy.
    last = tmp_path / "student" / "checkpoints" / "last.ckpt"
    restored = TransferClassifier.load_from_checkpoint(last, distillation={"teacher_checkpoint": str(teacher)})
    x = torch.rand(4, *restored.data_config["input_size"])
    y = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        distilled = restored._shared_step((x, y), "train")
        restored._teachers.clear()
        plain = restored._shared_step((x, y), "train")
        assert torch.allclose(plain, restored.criterion(restored(x), y))
    assert not torch.allclose(distilled, plain)
