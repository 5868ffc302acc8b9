"""`python -m medseg.train.export` ties every bench file it puts on the card to the exported weights (a card must not
carry another model's accuracy, organ or confidence figures), and refuses malformed options in one line; checked on
a real 4-iteration run (the CI config of test_train_integrity) and the shipped 2.1.0 accuracy file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medseg.errors import InvalidInputError, UsageError
from medseg.models.card import ModelCard
from medseg.models.registry import CARD_NAME, sha256_file
from medseg.train.export import main as export_main
from medseg.train.runner import run_training
from tests.test_train_integrity import env, write_config  # noqa: F401  (env: module fixture used by `run20`)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run20(env: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:  # noqa: F811
    """A finished 4-iteration run and the SHA-256 of its exported (float16) weights."""
    tmp = tmp_path_factory.mktemp("run20")
    run_training(write_config(tmp), tmp / "run")
    export_main([str(tmp / "run"), str(tmp / "candidate")])
    return tmp / "run", sha256_file(tmp / "candidate" / "weights.pt")


def accuracy_file(path: Path, weights_sha256: str | None) -> Path:
    """The shipped 2.1.0 accuracy bench output, stamped with `weights_sha256` (None: the field left out)."""
    content = json.loads((REPO / "docs/abdomen-2.1.0-accuracy.json").read_text())
    content.pop("weights_sha256", None)
    if weights_sha256 is not None:
        content["weights_sha256"] = weights_sha256
    path.write_text(json.dumps(content))
    return path


def test_accuracy_measured_on_the_exported_weights_goes_on_the_card(run20: tuple[Path, str], tmp_path: Path) -> None:
    run, exported = run20
    export_main([str(run), str(tmp_path / "m"), "--accuracy", str(accuracy_file(tmp_path / "a.json", exported))])
    card = ModelCard.load(tmp_path / "m" / CARD_NAME)
    assert card.weights.sha256 == exported
    assert card.metrics["locked_test_real_ct"]["cases"]


@pytest.mark.parametrize(("recorded", "message"), [("0" * 64, "measured on other weights"),
                                                   (None, "the file records no weights_sha256")])  # fmt: skip
@pytest.mark.parametrize("option", ["--accuracy", "--organs", "--confidence"])
def test_bench_files_of_other_or_unknown_weights_are_refused(run20: tuple[Path, str], tmp_path: Path, option: str,
                                                            recorded: str | None, message: str) -> None:  # fmt: skip
    run, exported = run20
    good = accuracy_file(tmp_path / "good.json", exported)
    bench = json.loads(accuracy_file(tmp_path / "bench.json", recorded).read_text())
    bench |= {"threshold": 0.2, "synthetic": [{}], "synthetic_organ_dice": {}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    args = [str(run), str(tmp_path / "m"), option, str(tmp_path / "bench.json")]
    if option != "--accuracy":
        args += ["--accuracy", str(good)]
    with pytest.raises(InvalidInputError, match=f"{option}: {message}") as err:
        export_main(args)
    assert err.value.path == tmp_path / "bench.json"
    assert not (tmp_path / "m" / "weights.pt").exists() and not (tmp_path / "m" / CARD_NAME).exists()


def test_a_bench_file_without_the_expected_fields_is_one_error_naming_it(run20: tuple[Path, str],
                                                                         tmp_path: Path) -> None:  # fmt: skip
    run, exported = run20
    (tmp_path / "acc.json").write_text(json.dumps({"weights_sha256": exported, "model": "abdomen"}))
    with pytest.raises(InvalidInputError, match="missing or malformed field 'liver_test_locked'") as err:
        export_main([str(run), str(tmp_path / "m"), "--accuracy", str(tmp_path / "acc.json")])
    assert err.value.path == tmp_path / "acc.json"


def test_a_destination_that_is_a_file_is_a_usage_error(run20: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = run20
    (tmp_path / "dest").write_text("not a folder")
    with pytest.raises(UsageError, match="not a folder"):
        export_main([str(run), str(tmp_path / "dest")])
    assert (tmp_path / "dest").read_text() == "not a folder"
