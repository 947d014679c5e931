"""Every ```python block of README.md runs as written (issue 18: the README's snippets are tested)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_user_snippets():
    assert len(BLOCKS) >= 2
    assert "metaopt.learned_opt" in BLOCKS[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, capsys):
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)


def test_the_optimizer_imports_without_the_train_extra():
    """``pip install metaopt`` (no extras) is enough for learned_opt and save/load."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ['orbax', 'orbax.checkpoint', 'tensorflow_datasets', 'sklearn', 'matplotlib',"
        " 'tqdm', 'tqdm.auto']:\n"
        "    sys.modules[m] = None\n"
        "import jax, jax.numpy as jnp, metaopt, tempfile, os\n"
        "p = {'w': jnp.ones(3)}\n"
        "tx = metaopt.learned_opt()\n"
        "u, s = tx.update(p, tx.init(p), p, value=1.0)\n"
        "f = os.path.join(tempfile.mkdtemp(), 'p.metaopt')\n"
        "metaopt.save(f, metaopt.init_policy(jax.random.key(0))); metaopt.load(f)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
