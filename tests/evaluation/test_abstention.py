""" "Not sure" below a threshold chosen on validation: the lowest one whose answered images reach the target
accuracy, stored in the checkpoint with each class's validation accuracy, and scored on the test split it never saw."""

import json

import pytest
import torch

from tl_lightning.data.splits import read_split
from tl_lightning.evaluation.abstention import answered, choose_threshold, per_class_accuracy
from tl_lightning.inference.predict import image_batches
from tl_lightning.models.checkpoint import read_record
from tl_lightning.models.module import TransferClassifier


def test_the_threshold_is_the_lowest_whose_answers_reach_the_target():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=generator), dim=1)
    targets = torch.randint(0, 4, (500,), generator=generator)
    targets[probs.max(1).values > 0.8] = probs.argmax(1)[probs.max(1).values > 0.8]  # confident means right, mostly
    rule = choose_threshold(probs, targets, target_accuracy=0.9)
    accuracy, share = answered(probs, targets, rule.threshold)
    assert accuracy == pytest.approx(rule.accuracy) and share == pytest.approx(rule.share)
    assert accuracy >= 0.9
    lower = probs.max(1).values[probs.max(1).values < rule.threshold].max()  # the next threshold down misses it
    assert answered(probs, targets, float(lower))[0] < 0.9


def test_images_of_equal_confidence_are_answered_together_and_an_unreachable_target_never_answers():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.7, 0.3], [0.6, 0.4]])
    rule = choose_threshold(probs, torch.tensor([0, 0, 1, 0]), target_accuracy=0.9)
    assert rule.threshold == pytest.approx(0.9) and rule.share == 0.25  # not 0.7: one of the two 0.7s is wrong
    never = choose_threshold(probs, torch.tensor([1, 1, 1, 1]), target_accuracy=0.5)
    assert never.threshold > 1 and never.accuracy is None and never.share == 0
    assert answered(probs, torch.tensor([1, 1, 1, 1]), never.threshold) == (None, 0.0)
    assert per_class_accuracy(probs, torch.tensor([0, 0, 1, 0]), ["a", "b"]) == {"a": 1.0, "b": 0.0}


def test_a_run_stores_the_rule_in_its_checkpoint_and_scores_it_on_the_test_split(digits_run):
    out, _ = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    model = TransferClassifier.load_from_checkpoint(out / "checkpoints" / "model.ckpt", map_location="cpu").eval()
    rule = read_record(out / "checkpoints" / "model.ckpt")["abstention"]
    assert rule["threshold"] == metrics["abstention/threshold"] and rule["target_accuracy"] == 0.95
    assert set(rule["class_val_accuracy"]) == set(model.class_names)
    assert metrics["abstention/val_share"] == rule["share"]

    split = read_split(out / "split.csv")
    labels = {file: model.class_names.index(name) for file, name in split["test"]}
    probabilities, truth = [], []
    with torch.no_grad():
        for x, files in image_batches(model, list(labels), 64):
            probabilities.append(model.probabilities(x))
            truth += [labels[file] for file in files]
    accuracy, share = answered(torch.cat(probabilities), torch.tensor(truth), rule["threshold"])
    assert metrics["test/answered_share"] == pytest.approx(share, abs=1e-6)
    assert metrics.get("test/answered_accuracy") == (None if accuracy is None else pytest.approx(accuracy, abs=1e-6))
