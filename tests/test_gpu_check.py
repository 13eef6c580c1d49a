"""`make gpu-check` (benchmarks/gpu_check.py) can be checked here only in its self-check mode, CPU against CPU at tiny
sizes: every path's code runs (catching API drift before a GPU is ever lent), each path's true result is within its
tolerance, and the comparisons are real: a checked side that strays from the reference is reported as a mismatch,
path by path, and the exit status says so."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the benchmarks package
from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check import Tolerance, compare  # noqa: E402

pytestmark = [pytest.mark.torchrun, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*randomly initialised", "ignore:.*Grad strides do not match")]


def perturbed(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every value moved by more than its largest magnitude: beyond any tolerance of the check."""
    return {key: value.double() + value.double().abs().max().nan_to_num() + 1 for key, value in values.items()}


@pytest.fixture(scope="module")
def planted_run():
    """One self-check run in which the checked side of every path returns its values perturbed; the true values of
    both sides are kept, to be judged as the check judges them."""
    seen: dict[str, tuple[gpu_check.Check, dict, dict]] = {}
    outcomes: dict[str, gpu_check.Outcome] = {}
    original = gpu_check.run_check

    def run_planted(check: gpu_check.Check, target: torch.device) -> gpu_check.Outcome:
        reference_work, work = check.reference or check.work, check.work
        reference_values: dict = {}
        true_values: dict = {}

        def reference(device):
            values, units = reference_work(device)
            reference_values.update(values)
            return values, units

        def planted(device):
            values, units = work(device)
            true_values.update(values)
            return perturbed(values), units

        seen[check.name] = (check, reference_values, true_values)
        outcomes[check.name] = original(dataclasses.replace(check, work=planted, reference=reference), target)
        return outcomes[check.name]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_check, "run_check", run_planted)
        code = gpu_check.main(["--device", "cpu"])
    return code, seen, outcomes


def test_every_path_runs_and_its_true_result_is_within_tolerance(planted_run):
    _, seen, outcomes = planted_run
    assert len(seen) == len(gpu_check.CHECKS) == 10
    assert [o.error for o in outcomes.values() if o.error] == []
    for name, (check, reference, result) in seen.items():
        assert set(check.tolerances) <= set(reference) & set(result), name
        for key, tolerance in check.tolerances.items():
            difference = compare(reference[key], result[key], tolerance)
            assert difference.ok, (name, key, difference)
    # where the self-check compares two different computations, the difference is seen (and tolerated)
    for name, key in (("extraction bf16", "h"), ("extraction bf16", "logits"), ("paired CKA", "bf16")):
        check, reference, result = seen[name]
        assert 0 < compare(reference[key], result[key], check.tolerances[key]).largest


def test_a_planted_mismatch_is_reported_on_every_path(planted_run, capsys):
    code, seen, outcomes = planted_run
    assert code == 1
    assert {name: outcome.verdict for name, outcome in outcomes.items()} == dict.fromkeys(seen, "MISMATCH")
    for outcome in outcomes.values():
        line = outcome.summary()
        assert line.startswith(f"{outcome.name}: MISMATCH (") and "tolerance |diff| <= " in line


def test_clean_paths_pass_and_exit_zero(capsys):
    assert gpu_check.main(["--device", "cpu", "--only", "ap_check,pruning"]) == 0
    out = capsys.readouterr().out
    assert "AP kernel: ok (ap: largest |diff| 0; tolerance |diff| <= 1e-12)" in out
    assert "pruning curves: ok" in out and "MISMATCH" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_zero(capsys):
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device:")


def test_compare_judges_each_element_against_its_tolerance():
    reference = torch.tensor([1.0, -4.0, 0.0])
    assert compare(reference, reference + torch.tensor([0.5, 0.0, 0.0]), Tolerance(atol=0.5)).ok
    assert not compare(reference, reference + torch.tensor([0.5, 0.0, 0.0]), Tolerance(atol=0.49)).ok
    # rtol scales with each reference element, scale with the largest one
    assert compare(reference, reference + torch.tensor([0.0, 1.0, 0.0]), Tolerance(rtol=0.25)).ok
    assert not compare(reference, reference + torch.tensor([0.0, 0.0, 1e-9]), Tolerance(rtol=0.25)).ok
    assert compare(reference, reference + torch.tensor([0.0, 0.0, 1.0]), Tolerance(scale=0.25)).ok
    difference = compare(reference, reference + torch.tensor([0.0, 0.0, 2.0]), Tolerance(scale=0.25))
    assert (difference.largest, difference.ratio, difference.ok) == (2.0, 2.0, False)
    for result, problem in ((torch.zeros(2), "shape"), (torch.tensor([1.0, -4.0, float("nan")]), "NaN")):
        assert problem in compare(reference, result, Tolerance(atol=1.0)).problem
    assert "nothing" in compare(torch.zeros(0), torch.zeros(0), Tolerance(atol=1.0)).problem


@pytest.mark.parametrize("name, precision, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H200", "fp32", 495e12), ("NVIDIA A100-SXM4-80GB", "bf16", 312e12), ("Tesla T4", "bf16", None)])
def test_peak_flops_by_device_name(name, precision, expected):
    peak = gpu_check.peak_flops(name, precision, tf32_convolutions=True)
    assert (peak[0] if peak else None) == expected
