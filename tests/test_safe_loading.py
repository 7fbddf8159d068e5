"""Files that would run code when loaded are refused unless the user opts in."""
import pytest
import torch

from distill import Distiller, DistillError, build_model, seed_everything
from distill.cli import main
from distill.fileio import UnsafeFile, load_weights, torch_load


class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_malicious(path, target):
    torch.save({"payload": Payload(target)}, path)


def test_malicious_torch_file_is_refused_and_runs_nothing(tmp_path):
    bad, marker = tmp_path / "teacher.pt", tmp_path / "pwned"
    write_malicious(bad, marker)
    with pytest.raises(UnsafeFile, match="could run code"):
        torch_load(bad)
    with pytest.raises(UnsafeFile):
        load_weights(torch.nn.Linear(2, 2), bad)
    assert not marker.exists()
    torch_load(bad, trust_pickle=True)  # the explicit opt-in really does unpickle
    assert marker.exists()


def test_plain_state_dict_files_load_without_trust(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = torch.nn.Linear(3, 2)
    load_weights(other, tmp_path / "w.pt")
    assert torch.equal(other.weight, model.weight)


def test_teacher_checkpoint_that_runs_code_is_refused_by_the_cli(tmp_path, capsys):
    bad, marker = tmp_path / "teacher.pt", tmp_path / "pwned"
    write_malicious(bad, marker)
    assert main(["run", "digits", "--set", f"teacher.checkpoint={bad}", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "could run code" in err and "--trust-pickle" in err
    assert not marker.exists()


def test_checkpoint_state_that_runs_code_is_refused_on_resume(tmp_path, digits):
    seed_everything(0)
    d = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), epochs=1, progress=False, run_dir=tmp_path)
    d.fit(digits.train)
    state = next((tmp_path / "checkpoints").glob("step-*")) / "state.pt"
    marker = tmp_path / "pwned"
    write_malicious(state, marker)
    again = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), epochs=2, progress=False, run_dir=tmp_path)
    with pytest.raises(DistillError, match="could run code"):
        again.fit(digits.train, resume=True)
    assert not marker.exists()
