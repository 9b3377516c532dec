"""The seeds' model API examples run as the page shows them, on ``import auralflow``.

The examples are kept verbatim in ``tests/data/seed_model_examples.py.txt``; where the seeds
folder sits beside the checkout (developers' machines and CI), the copy is checked against the
page itself. The only change made before running is the first example's placeholder path, which
becomes a real ``model.json`` written as ``auralflow config`` writes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from auralflow_dist import session
from auralflow_dist.config import ModelConfig

HERE = Path(__file__).parent
EXAMPLES = HERE / "data" / "seed_model_examples.py.txt"
SEED_PAGE = HERE.parents[1] / "shared" / "seeds" / "000_e99d73cb434ccfd9.txt"
PLACEHOLDER = "/path/to/my_model/config.json"


def examples() -> list[str]:
    text = EXAMPLES.read_text()
    return [
        part.split("\n", 1)[1] for part in re.split(r"^(?=# example \d+$)", text, flags=re.M)[1:]
    ]


def run(code: str) -> dict:
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(EXAMPLES), "exec"), scope)
    return scope


def test_the_copy_is_the_seed_page_verbatim() -> None:
    if not SEED_PAGE.exists():
        pytest.skip(f"{SEED_PAGE} is not beside this checkout")
    blocks = re.findall(r"```python\n(.*?)```", SEED_PAGE.read_text(), re.S)
    assert blocks == examples()


def test_mask_model_example_loads_a_model_json_dict_and_separates(tmp_path: Path) -> None:
    session.write_model_config(str(tmp_path / "my_model"), ModelConfig())
    (tmp_path / "my_model" / "config.json").write_bytes(
        (tmp_path / "my_model" / "model.json").read_bytes()
    )
    code = examples()[0]
    assert PLACEHOLDER in code
    scope = run(code.replace(PLACEHOLDER, str(tmp_path / "my_model" / "config.json")))
    assert isinstance(scope["config_data"], dict)
    assert scope["vocals_estimate"].shape == (1, 88200)
    assert torch.isfinite(scope["vocals_estimate"]).all()


@pytest.mark.parametrize("index", [1, 2, 3], ids=["simple", "lstm", "vae"])
def test_network_examples_run_as_written(index: int) -> None:
    scope = run(examples()[index])
    assert scope["source_mask"].shape == scope["mix_spec"].shape == (8, 1, 1024, 173)
    assert torch.isfinite(scope["source_estimate"]).all()
