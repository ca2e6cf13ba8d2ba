"""Property-based: random profiles (values and structure) through `build --dry-run` and `render-k8s`.

Whatever the profile holds, each command exits 0 or 2; a refusal is one `Error:` line with nothing
written (no output folder, no `.partial-*`); an accepted profile gives a Dockerfile with the recipe's
instructions (BuildKit's parser), an entrypoint that `sh -n` accepts and that runs `vllm` with exactly
the profile's argv, and PromQL that parses to the recipe's expressions with only the values changed.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._cli import invoke
from tests.deploy._structure import dockerfile_shape, no_partials, promql_model_values, promql_shape, run_entrypoint
from trdeploy.deploy.image import BuildOptions, render_context
from trdeploy.deploy.k8s import render
from trdeploy.deployment import DeploymentProfile

RECIPE = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"
BASE = yaml.safe_load(RECIPE.read_text())
REFERENCE = DeploymentProfile.load(RECIPE)
REF_DOCKERFILE = dockerfile_shape(render_context(REFERENCE, BuildOptions()).files["Dockerfile"])
REF_PROMQL = [promql_shape(e) for e in render(REFERENCE).promql]

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                    derandomize=True)

# Text a shell, a Dockerfile, YAML, PromQL or Kubernetes would read as syntax, plus line breaks and Unicode.
nasty = st.text(alphabet=st.sampled_from([*"ab-_./:@ \"'`$(){}[]\\\n\r\t#;&|*?~<>=!%^,+", "ğ", "ı", "\u202e", "\x00", "\x7f"]),
                max_size=24)
scalars = st.one_of(
    nasty, st.integers(-(2**40), 2**40), st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(nasty, inner, max_size=3)), max_leaves=6)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


PATHS = list(_paths(BASE))


@st.composite
def profiles(draw) -> dict:
    data = copy.deepcopy(BASE)
    # Values a user may legitimately hold are often printable but hostile: exercise the quoting.
    if draw(st.booleans()):
        printable = st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))
        data["engine_args"]["served_model_name"] = draw(st.text(alphabet=printable, min_size=1, max_size=40))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
            if parent is None:
                break
        if not isinstance(parent, dict):
            continue
        action = draw(st.integers(0, 9))
        if action == 0:
            parent.pop(path[-1], None)
        elif action == 1:
            parent[draw(nasty)] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return data


def _dump(data: dict) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return yaml.safe_dump(data)


def _check_refused_or_sound(result, out: Path, folder: Path, profile_path: Path) -> None:
    assert result.code in (0, 2), (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert no_partials(folder) == []
    if result.code == 2:
        lines = result.error_lines
        assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
        assert not out.exists()


@SETTINGS
@given(data=profiles())
def test_random_profiles_through_build_and_render_k8s(data):
    folder = Path(tempfile.mkdtemp(prefix="trdeploy-prop-"))
    try:
        path = folder / "p.yaml"
        path.write_text(_dump(data), encoding="utf-8")
        out = folder / "ctx"
        result = invoke("build", str(path), "--dry-run", "-o", str(out))
        _check_refused_or_sound(result, out, folder, path)
        if result.code == 0:
            profile = DeploymentProfile.load(path)
            assert dockerfile_shape((out / "Dockerfile").read_text()) == REF_DOCKERFILE
            code, argv, err = run_entrypoint((out / "entrypoint.sh").read_text(), folder / "run")
            assert code == 0 and argv == render_context(profile, BuildOptions()).argv, err
        k8s = folder / "k8s"
        result = invoke("render-k8s", str(path), "-o", str(k8s))
        _check_refused_or_sound(result, k8s, folder, path)
        if result.code == 0:
            profile = DeploymentProfile.load(path)
            exprs = render(profile).promql
            assert [promql_shape(e) for e in exprs] == REF_PROMQL
            assert all(set(promql_model_values(e)) <= {profile.engine_args.served_model_name} for e in exprs)
            assert all(math.isfinite(float(v)) for v in [profile.prediction.weights_gib, profile.prediction.e2e_ms])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        assert not any(".partial-" in p for p in os.listdir(tempfile.gettempdir()) if p.startswith(".ctx") or p.startswith(".k8s"))
