"""The numba kernels keep signatures a reader can check by eye: their buffers travel in named tuples
(``kernels/_workspace.py``), so no kernel takes more than a dozen parameters and swapping two of them is visible."""

import ast
from pathlib import Path

import nucleiscreen.kernels

MAX_PARAMETERS = 12


def test_no_kernel_takes_more_than_a_dozen_parameters():
    too_long = []
    for path in sorted(Path(nucleiscreen.kernels.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            jitted = isinstance(node, ast.FunctionDef) and any("njit" in ast.unparse(d) for d in node.decorator_list)
            if jitted and len(node.args.args) > MAX_PARAMETERS:
                too_long.append(f"{path.name}: {node.name} takes {len(node.args.args)}")
    assert not too_long, f"kernels with more than {MAX_PARAMETERS} parameters (group them): {too_long}"
