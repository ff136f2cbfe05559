"""The shared OBS machinery: damped Cholesky inverse with recorded retries, never an identity fallback."""
import pytest
import torch

from llmprune import obs
from llmprune.errors import NumericalError


def test_inverse_cholesky_is_the_upper_factor_of_the_damped_inverse():
    X = torch.randn(200, 12, dtype=torch.float64)
    H = 2 * X.T @ X / 200
    U, used = obs.damped_inverse_cholesky(H.clone(), 0.01)
    damped = H + 0.01 * torch.diag(H).mean() * torch.eye(12, dtype=torch.float64)
    assert used == 0.01
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(damped))
    assert torch.equal(U, torch.triu(U))


def test_failed_cholesky_retries_with_more_damping_and_warns():
    H = torch.diag(torch.tensor([1.0, 1.0, -1.5]))  # mean diag 1/6: damp 0.01, 0.1 and 1 fail; 10 works
    with pytest.warns(UserWarning, match="layer.q: Cholesky failed, succeeded with damp=10"):
        U, used = obs.damped_inverse_cholesky(H, 0.01, name="layer.q")
    assert used == pytest.approx(10.0)
    assert torch.isfinite(U).all()


def test_hopeless_hessian_raises_naming_the_layer_and_the_fix():
    H = torch.diag(torch.tensor([1.0, -100.0]))
    with pytest.raises(NumericalError, match="layer.k: .*raise --damp"):
        obs.damped_inverse_cholesky(H, 0.01, name="layer.k")


def test_non_finite_statistics_name_the_real_cause_instead_of_damping():
    H = torch.eye(3)
    H[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="layer.o: its input statistics are not finite"):
        obs.damped_inverse_cholesky(H, 0.01, name="layer.o")


def test_dead_inputs_are_masked():
    H = torch.diag(torch.tensor([2.0, 0.0, 3.0]))
    W = torch.ones(2, 3)
    dead = obs.mask_dead_inputs_(H, W)
    assert dead.tolist() == [False, True, False] and H[1, 1] == 1 and (W[:, 1] == 0).all()
