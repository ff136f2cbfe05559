import pytest
import torch

from llmprune.masks import PatternViolation, keep_mask, n_of_m, per_layer, per_row, verify_pattern
from llmprune.recipe import NM, Groups, Unstructured


def test_per_row_prunes_exact_count_in_every_row():
    scores = torch.rand(7, 33)
    keep = per_row(scores, 0.5)
    assert ((~keep).sum(1) == 16).all()
    # the pruned ones are the lowest of their row
    for r in range(7):
        assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


def test_per_layer_prunes_exact_count_over_matrix():
    scores = torch.rand(5, 12)
    keep = per_layer(scores, 0.3)
    assert int((~keep).sum()) == int(60 * 0.3)
    assert scores[~keep].max() <= scores[keep].min()


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 5)])
def test_n_of_m_keeps_exactly_n_per_group(n, m):
    scores = torch.rand(6, m * 5)
    keep = n_of_m(scores, n, m)
    assert (keep.reshape(6, 5, m).sum(-1) == n).all()
    grouped_scores = scores.reshape(6, 5, m)
    grouped_keep = keep.reshape(6, 5, m)
    for r in range(6):
        for g in range(5):
            kept, dropped = grouped_scores[r, g][grouped_keep[r, g]], grouped_scores[r, g][~grouped_keep[r, g]]
            assert dropped.max() <= kept.min()


def test_ties_are_broken_by_index_deterministically():
    scores = torch.ones(2, 8)
    keep = n_of_m(scores, 2, 4)
    expected = torch.tensor([False, False, True, True] * 2).repeat(2, 1)
    assert torch.equal(keep, expected)
    assert torch.equal(per_row(scores, 0.25), torch.tensor([[False, False] + [True] * 6] * 2))


def test_group_mask_drops_whole_groups():
    scores = torch.rand(4, 64)
    keep = keep_mask(scores, Groups(16, 0.5))
    blocks = keep.reshape(4, 4, 16)
    assert (blocks.all(-1) | (~blocks).all(-1)).all()
    assert ((~blocks.any(-1)).sum(-1) == 2).all()


def test_verify_pattern_rejects_wrong_masks():
    keep = n_of_m(torch.rand(3, 8), 2, 4)
    assert verify_pattern(keep, NM(2, 4)) == 0.5
    keep[0, 0] = ~keep[0, 0]
    with pytest.raises(PatternViolation):
        verify_pattern(keep, NM(2, 4))
    with pytest.raises(PatternViolation):
        verify_pattern(torch.ones(3, 8, dtype=torch.bool), Unstructured(0.5), compare="row")


def _numpy_stable_reference(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Independent oracle: numpy's stable argsort per row, the first ``count`` pruned."""
    import numpy as np

    keep = np.ones(scores.shape, dtype=bool)
    order = np.argsort(scores.numpy(), axis=-1, kind="stable")[..., :count]
    np.put_along_axis(keep, order, False, axis=-1)
    return torch.from_numpy(keep)


@pytest.mark.parametrize("shape, fraction", [((1, 5000), 0.5), ((9, 300), 0.3), ((4, 64), 0.9), ((3, 200), 0.01)])
def test_long_groups_cut_by_selection_match_a_stable_sort_with_heavy_ties(shape, fraction):
    """Groups of >= SELECT_FROM scores take the kthvalue path; with many equal scores the lowest-index ties must go
    first, exactly as a stable sort orders them."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, shape, generator=generator).float()  # 7 distinct values: ties everywhere
    count = int(shape[1] * fraction)
    expected = _numpy_stable_reference(scores, count)
    assert torch.equal(per_row(scores, fraction), expected)
    flat = scores.reshape(1, -1)
    assert torch.equal(per_layer(scores, fraction), _numpy_stable_reference(flat, int(flat.numel() * fraction))
                       .reshape(shape))


def test_nan_scores_are_never_pruned_before_numbers():
    scores = torch.rand(2, 100)
    scores[0, :10] = float("nan")
    keep = per_row(scores, 0.5)
    assert ((~keep).sum(1) == 50).all() and bool(keep[0, :10].all())
