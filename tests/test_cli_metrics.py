"""`robustsig er`, `robustsig analyze` and `robustsig cka` on real files: happy paths against the library,
and bad inputs that must exit with 2 and name the file, column or shape at fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import robustsig as rs

from cli_helpers import run_cli

SRC = Path(__file__).resolve().parents[1] / "src"


def run_json(capsys, *args: str):
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


# --- robustsig er -----------------------------------------------------------------------------------------------
def test_er_from_the_command_line(capsys):
    doc = run_json(capsys, "er", "--id", "0.76", "--shift", "0.55", "--id", "0.6", "--shift", "0.3")
    assert doc["baseline"] == {"b1": 0.76, "b0": -1.49, "source": "paper"}
    np.testing.assert_allclose([m["er"] for m in doc["models"]], rs.effective_robustness([0.76, 0.6], [0.55, 0.3]))
    code, out, _ = run_cli(capsys, "er", "--id", "0.76", "--shift", "0.55")
    assert code == 0 and "19.88" in out  # ER in points in the printed table
    doc = run_json(capsys, "er", "--id", "0.76", "--shift", "0.55", "--b1", "1.0", "--b0", "0.0")
    assert doc["models"][0]["er"] == pytest.approx(0.55 - 0.76) and doc["baseline"]["source"] == "options"


def test_er_table_and_refit(capsys, tmp_path):
    sets = ["imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet", "imagenet-a"]
    models = write_csv(tmp_path / "models.csv", ["model", "imagenet", *sets],
                       [["clip", 0.76, 0.7, 0.8, 0.5, 0.6, 0.5], ["resnet", 0.76, 0.64, 0.36, 0.24, 0.42, 0.01],
                        ["broken", 0.7, 0.6, "", 0.3, 0.3, 0.1]])
    rng = np.random.default_rng(14)
    acc_id = rng.uniform(0.5, 0.85, 30)
    acc_shift = 1 / (1 + np.exp(-(0.9 * np.log(acc_id / (1 - acc_id)) - 1.4 + 0.05 * rng.normal(size=30))))
    baseline = write_csv(tmp_path / "baseline.csv", ["model", "val", "acc_shift"],
                         [[f"m{i}", 100 * a, 100 * s] for i, (a, s) in enumerate(zip(acc_id, acc_shift))])
    doc = run_json(capsys, "er", str(models), "--fit", str(baseline), "--fit-percent")
    b1, b0, r = rs.fit_baseline(acc_id, acc_shift)
    assert doc["baseline"]["b1"] == pytest.approx(b1, abs=1e-9) and doc["baseline"]["b0"] == pytest.approx(b0, abs=1e-9)
    assert doc["baseline"]["models"] == 30 and doc["skipped"] == ["broken"]
    assert [m["model"] for m in doc["models"]] == ["clip", "resnet"]
    assert doc["models"][0]["acc_shift"] == pytest.approx(0.62)
    assert doc["models"][0]["er"] == pytest.approx(rs.effective_robustness(0.76, 0.62, b1, b0), abs=1e-12)
    assert doc["models"][0]["er"] > doc["models"][1]["er"]


def test_er_bad_inputs_exit_2_and_say_what_is_wrong(capsys, tmp_path):
    code, _, err = run_cli(capsys, "er", "--id", "76", "--shift", "0.5")
    assert code == 2 and "acc_id" in err and "divided by 100" in err
    percent = write_csv(tmp_path / "p.csv", ["model", "imagenet", "shift"], [["a", 76.0, 50.0]])
    code, _, err = run_cli(capsys, "er", str(percent))
    assert code == 2 and "p.csv" in err and "'imagenet'" in err and "--percent" in err
    code, out, _ = run_cli(capsys, "er", str(percent), "--percent")
    assert code == 0 and "76.00" in out
    no_shift = write_csv(tmp_path / "n.csv", ["model", "imagenet", "imagenet-r"], [["a", 0.7, 0.5]])
    code, _, err = run_cli(capsys, "er", str(no_shift))
    assert code == 2 and "n.csv" in err and "imagenet-v2" in err and "--shift-columns" in err
    code, _, err = run_cli(capsys, "er", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err and "does not exist" in err
    code, _, err = run_cli(capsys, "er", "--id", "0.7")
    assert code == 2 and "--shift" in err
    text = write_csv(tmp_path / "t.csv", ["model", "imagenet", "shift"], [["a", "high", 0.5]])
    code, _, err = run_cli(capsys, "er", str(text))
    assert code == 2 and "line 2" in err and "'high' is not a number" in err


# --- robustsig analyze ------------------------------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path):
    """A head, activations with an outlier neuron along one right singular vector, labels from the head."""
    g = torch.Generator().manual_seed(15)
    d, classes = 48, 12
    W = torch.randn(classes, d, generator=g)
    W[:, 7] = 0.0
    W[3, :] = 0.0
    W[3, 7] = 6.0  # row 3 and column 7 meet only here: neuron 7 is a right singular direction of W
    b = torch.randn(classes, generator=g)
    h = torch.randn(600, d, generator=g)
    h[:, 7] += 25.0 * torch.sign(torch.randn(600, generator=g))
    labels = (h @ W.T + b).argmax(1)
    np.save(tmp_path / "h.npy", h.numpy())
    np.save(tmp_path / "W.npy", W.numpy())
    np.save(tmp_path / "b.npy", b.numpy())
    np.save(tmp_path / "y.npy", labels.numpy())
    save_file({"weight": W, "bias": b}, str(tmp_path / "head.safetensors"))
    save_file({"h": h, "labels": labels}, str(tmp_path / "store.safetensors"))
    return tmp_path, W, b, h, labels


def test_analyze_npy(capsys, planted):
    path, W, b, h, labels = planted
    doc = run_json(capsys, "analyze", str(path / "h.npy"), "--head", str(path / "W.npy"), "--bias", str(path / "b.npy"),
                   "--labels", str(path / "y.npy"), "--fractions", "0,0.5,1", "--batch-size", "128")
    assert doc["kurtosis"] == pytest.approx(rs.activation_kurtosis(h), rel=1e-9)
    assert [o["dimension"] for o in doc["outlier_dimensions"]] == [7]
    svd = rs.head_svd(W)
    top = int(svd.V[7].abs().argmax())
    assert float(svd.V[7, top].abs()) == pytest.approx(1.0)
    assert [p["direction"] for p in doc["privileged_directions"]] == [top]
    np.testing.assert_allclose(doc["importance"], rs.direction_importance(W, h).numpy(), rtol=1e-5)
    for order in ("singular", "importance", "random"):
        expected = rs.pruning_curve(h, labels, W, b, [0, 0.5, 1], order)
        assert [row["accuracy"] for row in doc["pruning"][order]] == expected["accuracy"].tolist()
    assert doc["pruning"]["singular"][0]["accuracy"] == 1.0
    code, out, _ = run_cli(capsys, "analyze", str(path / "h.npy"), "--head", str(path / "W.npy"))
    assert code == 0 and "activation kurtosis" in out and "privileged directions" in out


def test_analyze_safetensors_uses_the_linear_state_dict_bias(capsys, planted):
    path, W, b, h, labels = planted
    doc = run_json(capsys, "analyze", str(path / "store.safetensors:h"), "--head", str(path / "head.safetensors"),
                   "--labels", str(path / "store.safetensors:labels"), "--orders", "singular", "--fractions", "0:1:0.5")
    assert doc["bias"].endswith("head.safetensors:bias")
    expected = rs.pruning_curve(h, labels, W, b, [0, 0.5, 1])
    assert [row["accuracy"] for row in doc["pruning"]["singular"]] == expected["accuracy"].tolist()
    assert list(doc["pruning"]) == ["singular"]


def test_analyze_scores_with_a_class_mapping(capsys, planted):
    path, W, b, h, _ = planted
    sets = [[0, 1], [3], [5, 6, 7]]
    labels = torch.randint(0, 3, (600,), generator=torch.Generator().manual_seed(3))
    np.save(path / "y3.npy", labels.numpy())
    (path / "classes.json").write_text(json.dumps({"class_map": sets}))
    doc = run_json(capsys, "analyze", str(path / "h.npy"), "--head", str(path / "head.safetensors"),
                   "--labels", str(path / "y3.npy"), "--scoring", str(path / "classes.json"),
                   "--orders", "singular", "--fractions", "0,0.5")
    expected = rs.pruning_curve(h, labels, W, b, [0, 0.5], class_map=sets)
    assert [row["accuracy"] for row in doc["pruning"]["singular"]] == expected["accuracy"].tolist()
    (path / "bad.json").write_text("{not json")
    code, _, err = run_cli(capsys, "analyze", str(path / "h.npy"), "--head", str(path / "W.npy"), "--labels",
                       str(path / "y3.npy"), "--scoring", str(path / "bad.json"))
    assert code == 2 and "bad.json" in err and "not valid JSON" in err


def test_analyze_bad_inputs(capsys, planted, tmp_path):
    path, *_ = planted
    h, W = str(path / "h.npy"), str(path / "W.npy")
    np.save(tmp_path / "Wt.npy", np.load(path / "W.npy").T)
    code, _, err = run_cli(capsys, "analyze", h, "--head", str(tmp_path / "Wt.npy"))
    assert code == 2 and "Wt.npy" in err and "classes x 48" in err
    np.save(tmp_path / "short.npy", np.zeros(10, dtype=np.int64))
    code, _, err = run_cli(capsys, "analyze", h, "--head", W, "--labels", str(tmp_path / "short.npy"))
    assert code == 2 and "short.npy" in err and "600 rows" in err
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "objects.npy"), "--head", W)
    assert code == 2 and "objects.npy" in err and "pickled" in err
    code, _, err = run_cli(capsys, "analyze", str(path / "store.safetensors:nope"), "--head", W)
    assert code == 2 and "no tensor 'nope'" in err and "h, labels" in err
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "two.safetensors"), "--head", W)
    assert code == 2 and "two.safetensors:KEY" in err
    (tmp_path / "h.txt").write_text("1 2 3")
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "h.txt"), "--head", W)
    assert code == 2 and ".npy or .safetensors" in err
    code, _, err = run_cli(capsys, "analyze", h, "--head", W, "--orders", "largest")
    assert code == 2 and "largest" in err
    code, _, err = run_cli(capsys, "analyze", h, "--head", W, "--labels", str(path / "y.npy"), "--fractions", "0:2:x")
    assert code == 2 and "--fractions" in err


# --- robustsig cka ----------------------------------------------------------------------------------------------
def test_cka_files(capsys, tmp_path):
    rng = np.random.default_rng(16)
    a = rng.normal(size=(400, 20)).astype(np.float32)
    b = np.tanh(a @ rng.normal(size=(20, 12))).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    save_file({"h": torch.tensor(b)}, str(tmp_path / "b.safetensors"))
    doc = run_json(capsys, "cka", str(tmp_path / "a.npy"), str(tmp_path / "b.safetensors"), "--batch-size", "64")
    assert doc["cka"] == pytest.approx(rs.cka(a, b), abs=1e-6) and doc["samples"] == 400
    doc = run_json(capsys, "cka", str(tmp_path / "a.npy"), str(tmp_path / "b.safetensors"), "--minibatch", "133")
    mb = rs.MinibatchCKA()
    for start, stop in [(0, 133), (133, 266), (266, 400)]:  # the 1-row tail joins the last batch
        mb.update(a[start:stop], b[start:stop])
    assert doc["cka"] == pytest.approx(mb.compute(), abs=1e-9)
    np.save(tmp_path / "c.npy", a[:10])
    code, _, err = run_cli(capsys, "cka", str(tmp_path / "a.npy"), str(tmp_path / "c.npy"))
    assert code == 2 and "400 rows" in err and "c.npy" in err
    code, _, err = run_cli(capsys, "cka", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--minibatch", "3")
    assert code == 2 and "at least 4" in err


def test_entry_point_prints_errors_without_traceback(tmp_path):
    env = {"PYTHONPATH": str(SRC), "ROBUSTSIG_PROGRESS": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "robustsig", "er", "--id", "0.76", "--shift", "55"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: acc_shift") and "Traceback" not in done.stderr
    listing = subprocess.run([sys.executable, "-m", "robustsig", "--help"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert listing.returncode == 0 and all(c in listing.stdout for c in ("analyze", "er", "cka"))
