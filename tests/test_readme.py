"""The README's promises: its plugin example works as printed, and CI runs its test command."""

import re

from helpers import ROOT, install_package, run_python

README = (ROOT / "README.md").read_text()


def test_readme_plugin_example_installs_and_passes_the_conformance_suite(tmp_path):
    blocks = dict(re.findall(r"<!-- plugin-example: (\S+) -->\n```\w+\n(.*?)```", README, re.S))
    assert set(blocks) == {"my_routing.py", "pyproject.toml"}
    assert len(blocks["my_routing.py"].splitlines()) <= 45
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in blocks.items():
        (pkg / name).write_text(text)
    install_package(pkg, tmp_path / "site")
    res = run_python(
        "import torch, capslab\n"
        "from capslab.testing import run_all\n"
        "run_all(kinds=('routing',), names=['cosine'])\n"
        "m = capslab.build_model({'name': 'capsnet', 'conv_channels': 8, 'primary_types': 2},"
        " capslab.DataInfo(1, 28, 28, 10), routing={'name': 'cosine', 'temperature': 0.2})\n"
        "out = m(torch.rand(2, 1, 28, 28), torch.tensor([1, 2]), diagnostics=True)\n"
        "print('ok', capslab.registry('routing').entry('cosine').dist, tuple(out.routing.coupling.shape))\n",
        extra_path=tmp_path / "site",
    )
    assert res.returncode == 0, res.stderr
    assert "ok capslab-cosine (2, 72, 10)" in res.stdout  # 2 types x 6 x 6 primary capsules


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", README, re.S)
    test_command = commands[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [step.strip() for step in test_command.split("&&")]
    where = [ci.find(step) for step in steps]
    assert -1 not in where and where == sorted(where), f"CI does not run {steps} in this order: {ci}"


def test_readme_recipe_snippets_are_the_files():
    blocks = re.findall(r"<!-- recipe: (\S+) -->\n```yaml\n(.*?)```", README, re.S)
    assert blocks, "the README shows the quickstart recipe"
    for path, text in blocks:
        assert text == (ROOT / path).read_text(), f"the README's copy of {path} differs from the file"
