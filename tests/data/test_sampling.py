"""The training order: the same for a seed and epoch, a disjoint share per rank, class-balanced on request, and able
to start where a stopped run was."""

import torch

from tl_lightning.data.sampling import EpochSampler


def test_the_order_depends_on_seed_and_epoch_only():
    data = list(range(50))
    first, again, other_seed = EpochSampler(data, seed=3), EpochSampler(data, seed=3), EpochSampler(data, seed=4)
    assert list(first) == list(again) != list(other_seed)
    assert sorted(first) == data  # a permutation: every sample once
    first.set_epoch(1)
    assert list(first) != list(again)


def test_ranks_get_disjoint_shares_that_cover_the_data():
    data = list(range(10))
    shares = [list(EpochSampler(data, seed=0, num_replicas=4, rank=rank)) for rank in range(4)]
    assert {len(share) for share in shares} == {3}  # padded to 12, as DistributedSampler pads
    assert set().union(*shares) == set(data)
    assert sum(len(set(a) & set(b)) for i, a in enumerate(shares) for b in shares[i + 1 :]) == 2  # the padding only


def test_weights_draw_classes_evenly_with_replacement():
    labels = [0] * 90 + [1] * 10
    weights = [1 / 90 if label == 0 else 1 / 10 for label in labels]
    drawn = [labels[i] for epoch in range(20) for i in _epoch(EpochSampler(labels, seed=0, weights=weights), epoch)]
    assert 0.45 < sum(drawn) / len(drawn) < 0.55


def test_start_at_skips_once_and_seeds_stay_with_their_samples():
    data = list(range(20))
    full = list(EpochSampler(data, seed=1, with_seeds=True, start_at=None))
    resumed = EpochSampler(data, seed=1, with_seeds=True, start_at=(0, 8))
    assert list(resumed) == full[8:]  # the same (index, augmentation seed) pairs as the uninterrupted epoch
    assert list(resumed) == full  # once: the next pass over that epoch is whole
    later = EpochSampler(data, seed=1, start_at=(2, 8))
    assert len(list(later)) == 20  # another epoch than the stopped one: nothing skipped
    assert all(isinstance(seed, int) and seed >= 0 for _, seed in full)


def test_no_draw_from_the_global_generator():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(EpochSampler(list(range(30)), seed=0, with_seeds=True))
    assert torch.equal(before, torch.get_rng_state())


def _epoch(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)
