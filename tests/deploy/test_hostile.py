"""A profile is untrusted input (issue "Take second"): each class of hostile input found against build,
render-k8s, bench and the built entrypoint, with a test that failed before the boundary was built.

Every refusal is one `Error:` line and exit 2, with nothing written; every accepted value changes the
values of the generated files, never their structure (checked with real parsers, tests/deploy/_structure.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from _bench_servers import free_port
from conftest import ROOT

from tests._cli import assert_one_line_error, invoke
from tests.deploy._structure import (
    dockerfile_labels,
    dockerfile_shape,
    k8s_dollar_paren_ok,
    no_partials,
    promql_model_values,
    promql_shape,
    run_entrypoint,
)
from trdeploy.deploy import container as ct
from trdeploy.deploy.image import BuildOptions, render_context
from trdeploy.deploy.k8s import render
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.output import OUTPUT_MARKER, atomic_directory

RECIPE = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"
AWQ = ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml"


def _data(path: Path = RECIPE) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, data: dict | str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _edit(tmp_path: Path, edit, name: str = "p.yaml") -> Path:
    data = _data()
    edit(data)
    return _write(tmp_path, data, name)


def _refused_everywhere(tmp_path: Path, profile: Path, contains: str | None = None) -> None:
    """build --dry-run and render-k8s both refuse the profile in one line and write nothing."""
    before = set(os.listdir(tmp_path))
    for args in (["build", str(profile), "--dry-run", "-o", str(tmp_path / "ctx")], ["render-k8s", str(profile), "-o", str(tmp_path / "k8s")]):
        result = invoke(*args)
        assert_one_line_error(result, contains=contains)
    assert set(os.listdir(tmp_path)) == before


# --- 1. command injection through the generated files -----------------------------------------------------------

INJECTIONS = [
    ("name", lambda d: d.update(name="x\ntouch /tmp/PWNED\n#")),
    ("vllm_version", lambda d: d.update(vllm_version="0.25.0\nFROM evil")),
    ("model.id", lambda d: d["model"].update(id="org/m\nRUN touch /tmp/PWNED")),
    ("served name", lambda d: d["engine_args"].update(served_model_name="m\nRUN touch /tmp/PWNED")),
    ("engine model", lambda d: d["engine_args"].update(model="org/m\nUSER 0")),
    ("tier", lambda d: d["gpu"].update(tier="h100\nRUN x")),
    ("node label", lambda d: d["gpu"].update(node_labels=["NVIDIA-H100\n"])),
    ("trailing newline hub id", lambda d: d["engine_args"].update(model="org/model\n")),
    ("engine model ..", lambda d: d["engine_args"].update(model="..")),
    ("engine model ./..", lambda d: d["engine_args"].update(model="./x/..")),
    ("cuda", lambda d: d["gpu"].update(cuda="13.0 AS evil")),
    ("driver", lambda d: d["gpu"].update(min_driver="580$(id)")),
]


@pytest.mark.parametrize("field, edit", INJECTIONS, ids=[i[0] for i in INJECTIONS])
def test_values_that_would_add_instructions_are_refused_when_read(tmp_path, field, edit):
    _refused_everywhere(tmp_path, _edit(tmp_path, edit), "is not a valid DeploymentProfile")


def test_tune_refuses_a_name_that_would_land_in_a_comment():
    assert_one_line_error(invoke("tune", "--gpu", "h100", "--name", "x\ntouch /tmp/PWNED\n#"), contains="--name")


@pytest.mark.parametrize("option, value", [
    ("--base-image", "vllm/vllm-openai:v0.25.0\nRUN touch /tmp/PWNED"),
    ("--base-image", "vllm/vllm-openai:v0.25.0 AS x"),
    ("--base-image", "Upper/Case:1"),
    ("--base-image", "../x:1"),
    ("--revision", "main\nRUN x"),
    ("--revision", "../../etc"),
    ("--model-repo", "org/m x"),
])
def test_build_options_that_reach_the_dockerfile_are_refused(tmp_path, option, value):
    args = ["build", str(RECIPE), "--dry-run", "-o", str(tmp_path / "ctx"), option, value]
    if option in ("--revision", "--model-repo"):
        args += ["--model-source", "download"]
    assert_one_line_error(invoke(*args), contains=option)
    assert not (tmp_path / "ctx").exists()


HOSTILE_NAMES = ['x"} or vector(1000) or up{a="', "a\\b", "$(VLLM_API_KEY)", "q'uote \"dq\" `tick` $HOME ${X}", "türkçe ağır model", "\\$(x)"]


@pytest.mark.parametrize("served", HOSTILE_NAMES)
def test_a_printable_served_name_changes_values_never_structure(tmp_path, served):
    base = DeploymentProfile.load(RECIPE)
    prof = base.model_copy(update={"engine_args": base.engine_args.model_copy(update={"served_model_name": served})})
    path = tmp_path / "p.yaml"
    prof.save(path)
    prof = DeploymentProfile.load(path)  # through the boundary: printable text is accepted
    # Dockerfile: the same instructions as the recipe's; the label holds the name exactly.
    for source in ("mount", "bake", "download"):
        want = render_context(base, BuildOptions(model_source=source)).files["Dockerfile"]
        got = render_context(prof, BuildOptions(model_source=source)).files["Dockerfile"]
        assert dockerfile_shape(got) == dockerfile_shape(want)
        assert dockerfile_labels(got)["io.trdeploy.served-model-name"] == served
    # entrypoint: `sh -n` clean, and run, vllm gets the name as one argument, literally.
    context = render_context(prof, BuildOptions())
    code, argv, err = run_entrypoint(context.files["entrypoint.sh"], tmp_path / "run")
    assert code == 0 and argv == context.argv, err
    assert argv[argv.index("--served-model-name") + 1] == served
    # PromQL: every expression parses to the recipe's expression, with the name as the matcher's value.
    rendered, recipe = render(prof), render(base)
    assert len(rendered.promql) == len(recipe.promql)
    for expr, ref in zip(rendered.promql, recipe.promql, strict=True):
        assert promql_shape(expr) == promql_shape(ref)
        assert set(promql_model_values(expr)) <= {served}
    # Kubernetes: no `$(` it would expand in any command, arg or env value.
    assert k8s_dollar_paren_ok(rendered.objects) == []


def test_bake_folder_names_never_reach_the_dockerfile(tmp_path):
    model = tmp_path / "my dir $HOME \"q\"\nx"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "ctx"
    result = invoke("build", str(AWQ), "--model-source", "bake", "--model-dir", str(model), "--dry-run", "-o", str(out))
    assert result.code == 0, result.stderr
    text = (out / "Dockerfile").read_text()
    copy = [c for c in dockerfile_shape(text) if c[0] == "COPY"][-1]
    assert copy == ("COPY", 2, ("--chown=10001:0",))
    assert '["model/", "/models/Meta-Llama-3-8B-Instruct-awq/"]' in text and "$HOME" not in text
    assert (out / "model" / "config.json").read_text() == "{}"


def test_dockerfile_lines_over_buildkits_limit_are_refused():
    with pytest.raises(ValueError, match="64 KiB"):
        ct.check_dockerfile_lines("FROM x\nLABEL a=" + "b" * 70_000 + "\n")
    # The profile's length limits keep every rendered line far below it.
    prof = DeploymentProfile.load(RECIPE)
    longest = prof.model_copy(update={"engine_args": prof.engine_args.model_copy(update={"served_model_name": "n" * 256})})
    assert max(len(line) for line in render_context(longest, BuildOptions()).files["Dockerfile"].splitlines()) < 2000


# --- 2 and 3. PromQL and Kubernetes expansion ---------------------------------------------------------------------


def test_a_name_that_closes_the_matcher_cannot_feed_the_autoscaler(tmp_path):
    served = 'x"} or vector(1000) or up{a="'
    path = _edit(tmp_path, lambda d: d["engine_args"].update(served_model_name=served))
    result = invoke("render-k8s", str(path), "-o", str(tmp_path / "k8s"))
    assert result.code == 0, result.stderr
    so = yaml.safe_load((tmp_path / "k8s" / "scaledobject.yaml").read_text())
    query = so["spec"]["triggers"][0]["metadata"]["query"]
    assert promql_model_values(query) == [served, served]
    assert "vector(1000)" not in promql_shape(query)  # only inside a string literal, never an expression


def test_the_api_key_cannot_be_reached_through_dollar_paren(tmp_path):
    from trdeploy.deploy.k8s import RenderOptions

    path = _edit(tmp_path, lambda d: d["engine_args"].update(served_model_name="$(VLLM_API_KEY)"))
    prof = DeploymentProfile.load(path)
    for opts in (RenderOptions(), RenderOptions(port=9000), RenderOptions(model_source="download")):
        assert k8s_dollar_paren_ok(render(prof, opts).objects) == []
    result = invoke("render-k8s", str(path), "-o", "-")
    assert result.code == 0 and k8s_dollar_paren_ok(list(yaml.safe_load_all(result.stdout))) == []
    # The image's entrypoint passes it to vLLM literally (the shell never expands it).
    code, argv, _ = run_entrypoint(render_context(DeploymentProfile.load(path), BuildOptions()).files["entrypoint.sh"], tmp_path / "run",
                                   env={"VLLM_API_KEY": "sk-secret"})
    assert code == 0 and "$(VLLM_API_KEY)" in argv and "sk-secret" not in argv
    assert ct.k8s_text("a$(B)c$$(D)") == "a$$(B)c$$$(D)"


def test_sla_outside_vllms_histogram_buckets_is_one_line(tmp_path):
    for field, value, bucket in (("tpot_ms", 5.0, "smallest"), ("e2e_p95_ms", 9_000_000.0, "largest"), ("ttft_p95_ms", 0.5, "smallest")):
        path = _edit(tmp_path, lambda d, f=field, v=value: d["sla"].update({f: v}), name=f"{field}.yaml")
        assert_one_line_error(invoke("render-k8s", str(path), "-o", str(tmp_path / "k8s")), contains=bucket)
    assert not (tmp_path / "k8s").exists()


# --- 4. outputs: never delete or replace what the command did not create -----------------------------------------


def test_output_folder_holding_the_input_is_refused_and_kept(tmp_path):
    folder = tmp_path / "DIR"
    folder.mkdir()
    profile = folder / "trdeploy.yaml"
    profile.write_bytes(RECIPE.read_bytes())
    (folder / "notes.txt").write_text("mine")
    for cmd in (["render-k8s", str(profile), "-o", str(folder), "--force"], ["build", str(profile), "--dry-run", "-o", str(folder), "--force"],
                ["render-k8s", str(profile), "-o", str(folder / "sub" / ".."), "--force"]):
        assert_one_line_error(invoke(*cmd), contains="contains the PROFILE input")
    assert sorted(os.listdir(folder)) == ["notes.txt", "trdeploy.yaml"] and profile.read_bytes() == RECIPE.read_bytes()
    assert no_partials(tmp_path) == [] and no_partials(folder) == []


def test_force_replaces_only_a_folder_trdeploy_made(tmp_path, monkeypatch):
    out = tmp_path / "k8s"
    assert invoke("render-k8s", str(RECIPE), "-o", str(out)).code == 0
    assert json.loads((out / OUTPUT_MARKER).read_text())["files"][0] == "dashboard.yaml"
    assert invoke("render-k8s", str(RECIPE), "-o", str(out), "--force", "--name", "other").code == 0  # ours: replaced
    assert "name: other" in (out / "deployment.yaml").read_text()
    (out / "my-patch.yaml").write_text("keep me")
    assert_one_line_error(invoke("render-k8s", str(RECIPE), "-o", str(out), "--force"), contains="my-patch.yaml")
    assert (out / "my-patch.yaml").read_text() == "keep me"
    # `-o .` in a folder with other files: refused, nothing left behind.
    work = tmp_path / "work"
    work.mkdir()
    (work / "README").write_text("x")
    monkeypatch.chdir(work)
    assert_one_line_error(invoke("render-k8s", str(RECIPE), "-o", ".", "--force"), contains="did not write")
    assert os.listdir(work) == ["README"] and no_partials(tmp_path) == []
    # A mount point is never renamed away.
    if os.path.ismount("/dev/shm"):
        assert_one_line_error(invoke("render-k8s", str(RECIPE), "-o", "/dev/shm", "--force"), contains="mount point")


def test_a_failure_inside_leaves_no_partial_folder(tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.yaml").write_text("x")
            raise exc
        assert os.listdir(tmp_path) == []
    with pytest.raises(TrdeployError, match="holds files trdeploy did not write"):
        (tmp_path / "user").mkdir()
        (tmp_path / "user" / "a").write_text("a")
        with atomic_directory(tmp_path / "user", force=True):
            pass
    assert sorted(os.listdir(tmp_path)) == ["user"]


# --- 5. secrets -------------------------------------------------------------------------------------------------


def test_credentials_in_the_url_are_written_nowhere(tmp_path):
    from tests._bench_servers import start_timed_server

    secret = "hunter2-" + os.urandom(4).hex()
    server = start_timed_server(tmp_path / "server.log", ttft_s=0.01, itl_s=0.001)
    try:
        url = server.url.replace("http://", f"http://alice:{secret}@")
        report = tmp_path / "r.json"
        result = invoke("bench", "--url", url, "-n", "2", "--output-tokens", "2", "--model", "m", "-o", str(report), "--json")
        assert result.code in (0, 1), result.stderr
        for text in (result.stdout, result.stderr, report.read_text()):
            assert secret not in text and "alice" not in text
        data = json.loads(result.stdout)
        assert data["endpoint"]["url"].startswith("http://***@127.0.0.1") and data["runs"][0]["completed"] == 2
    finally:
        server.stop()
    closed = f"http://bob:{secret}@127.0.0.1:{free_port()}"
    result = invoke("bench", "--url", closed, "-n", "1", "--model", "m", "--json")
    assert secret not in result.stdout + result.stderr
    assert_one_line_error(invoke("render-k8s", str(RECIPE), "-o", "-", "--prometheus-url", f"http://u:{secret}@prom:9090"), contains="credentials")


def test_bake_never_follows_links_out_of_the_model_folder(tmp_path):
    token = tmp_path / "token"
    token.write_text("hf_secret")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").symlink_to(token)
    args = ["build", str(AWQ), "--model-source", "bake", "--model-dir", str(model), "--dry-run", "-o", str(tmp_path / "ctx")]
    assert_one_line_error(invoke(*args), contains="outside the model folder")
    (model / "tokenizer.json").unlink()
    (model / "zero.bin").symlink_to("/dev/zero")
    t0 = time.monotonic()
    assert_one_line_error(invoke(*args), contains="outside the model folder")
    assert time.monotonic() - t0 < 10
    (model / "zero.bin").unlink()
    os.mkfifo(model / "pipe")
    assert_one_line_error(invoke(*args), contains="not a regular file")
    (model / "pipe").unlink()
    (model / "sub").mkdir()
    (model / "sub" / "w.safetensors").write_text("w")
    (model / "inside.json").symlink_to(model / "config.json")  # a link inside the folder is fine
    assert invoke(*args).code == 0
    assert sorted(p.relative_to(tmp_path / "ctx" / "model").as_posix() for p in (tmp_path / "ctx" / "model").rglob("*") if p.is_file()) == [
        "config.json", "inside.json", "sub/w.safetensors"]
    assert not any(p.is_symlink() for p in (tmp_path / "ctx").rglob("*"))
    # A hub-cache snapshot (files are links into ../../blobs) is the one outside place allowed.
    repo = tmp_path / "hub" / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_text('{"a": 1}')
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/abc123")
    args[args.index(str(model))] = str(snap)
    assert invoke(*args, "--force").code == 0
    assert (tmp_path / "ctx" / "model" / "config.json").read_text() == '{"a": 1}'


# --- 6. input that used to be a traceback ------------------------------------------------------------------------

TRACEBACKS = [
    ("NaN weights", lambda d: d["prediction"].update(weights_gib=float("nan"))),
    ("inf SLA", lambda d: d["sla"].update(tpot_ms=float("inf"))),
    ("negative weights", lambda d: d["prediction"].update(weights_gib=-90.0)),
    ("replicas beyond int32", lambda d: d["prediction"]["capacity"].update(replicas_max=2**31)),
    ("min above max", lambda d: d["prediction"]["capacity"].update(replicas_min=5, replicas_max=2)),
    ("bool as int", lambda d: d["engine_args"].update(max_num_seqs=True)),
    ("string as int", lambda d: d["engine_args"].update(max_num_seqs="72")),
    ("details NaN", lambda d: d["prediction"]["details"].update(x=float("nan"))),
    ("details deep", lambda d: d["prediction"]["details"].update(x=[[[[[[[[[[1]]]]]]]]]])),
    ("unknown key", lambda d: d["gpu"].update(extra=1)),
    ("bad label value", lambda d: d["gpu"].update(node_labels=["has space"])),
    ("uppercase namespace-ish tier", lambda d: d["gpu"].update(tier="H100")),
]


@pytest.mark.parametrize("case, edit", TRACEBACKS, ids=[t[0] for t in TRACEBACKS])
def test_bad_values_are_one_line(tmp_path, case, edit):
    _refused_everywhere(tmp_path, _edit(tmp_path, edit), "is not a valid DeploymentProfile")


@pytest.mark.parametrize("case, text, message", [
    ("5000-digit integer", "schema_version: 2\nname: x\nreplicas: " + "9" * 5000 + "\n", "cannot convert"),
    ("deep nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nesting deeper than"),
    ("recursive alias", "a: &x [*x]\n", "alias"),
    ("billion laughs", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     + "".join(f"l{i}: &l{i} [" + ", ".join([f"*{'c' if i == 0 else f'l{i - 1}'}"] * 9) + "]\n" for i in range(9)), "alias"),
    ("schema 999", yaml.safe_dump({**_data(), "schema_version": 999}), "schema_version '999'"),
    ("not UTF-8", b"name: \xff\xfe\n".decode("latin-1"), "not UTF-8"),
])
def test_hostile_yaml_is_refused_before_it_is_built(tmp_path, case, text, message):
    path = tmp_path / "p.yaml"
    path.write_bytes(text.encode("latin-1") if case == "not UTF-8" else text.encode())
    t0 = time.monotonic()
    _refused_everywhere(tmp_path, path, message)
    assert time.monotonic() - t0 < 10  # no expansion, no exhaustion


def test_a_profile_over_the_size_limit_is_not_read(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(RECIPE.read_text() + "# " + "x" * (1024 * 1024) + "\n")
    _refused_everywhere(tmp_path, path, "more than a DeploymentProfile may be")


@pytest.mark.parametrize("args, message", [
    (["profile", "--resamples", str(10**12)], "--resamples"),
    (["bench", "--synthetic", "4", "--api", "completions", "--synthetic-vocab-size", str(10**30)], "--synthetic-vocab-size"),
    (["bench", "--model", "m", "--extra-body", "[" * 100_000 + "]" * 100_000], "--extra-body"),
    (["bench", "--model", "m", "--extra-body", '{"a": ' + "[" * 40 + "]" * 40 + "}"], "--extra-body nests more than"),
    (["bench", "--model", "m", "--extra-body", '{"a": ' + "9" * 5000 + "}"], "--extra-body"),
    (["render-k8s", str(RECIPE), "-o", "-", "--namespace", "Prod"], "--namespace"),
    (["render-k8s", str(RECIPE), "-o", "-", "--image", "reg/x:1 --privileged"], "--image"),
    (["render-k8s", str(RECIPE), "-o", "-", "--storage-class", "fast disk"], "--storage-class"),
    (["render-k8s", str(RECIPE), "-o", "-", "--monitoring-namespace", "a" * 64], "--monitoring-namespace"),
    (["render-k8s", str(RECIPE), "-o", "-", "--name", "x" * 41], "--name"),
])
def test_options_that_reach_generated_text_are_bounded(args, message):
    assert_one_line_error(invoke(*args), contains=message)


def test_deep_json_inputs_are_one_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "merhaba"}\n' + deep + "\n")
    assert_one_line_error(invoke("profile", "--corpus", str(corpus)), contains="nested too deeply")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(deep + "\n")
    assert_one_line_error(invoke("bench", "--model", "m", "--prompts", str(prompts), "--url", f"http://127.0.0.1:{free_port()}"),
                          contains="nested too deeply")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": ' + deep + "}")
    assert_one_line_error(invoke("tune", "--gpu", "h100", "--model", str(model)), contains="config.json")


def test_the_engine_builds_a_hostile_name_as_a_literal_label(docker_client, vllm_base_image, tmp_path):
    """The Dockerfile's own substitution (`$HOME` in a LABEL) and quoting, checked by the real engine."""
    served = 'm $HOME ${USER} "q" \\ $(id)'
    path = _edit(tmp_path, lambda d: d["engine_args"].update(served_model_name=served))
    tag = f"trdeploy-test/hostile:{free_port()}"  # unique: sessions may share one engine
    result = invoke("build", str(path), "--base-image", vllm_base_image, "--tag", tag, "--json")
    assert result.code == 0, result.stderr[-2000:]
    try:
        labels = docker_client.images.get(tag).labels
        assert labels["io.trdeploy.served-model-name"] == served
        code = docker_client.containers.run(tag, command=["--port", str(free_port())], environment={"VLLM_API_KEY": "k"},
                                            network_mode="host", detach=True)
        try:
            deadline = time.monotonic() + 20
            while "STANDIN_VLLM" not in code.logs().decode():
                assert time.monotonic() < deadline, code.logs().decode()
                time.sleep(0.2)
            record = json.loads(next(ln for ln in code.logs().decode().splitlines() if ln.startswith("STANDIN_VLLM ")).split(" ", 1)[1])
            assert record["argv"][record["argv"].index("--served-model-name") + 1] == served
        finally:
            code.remove(force=True)
    finally:
        docker_client.images.remove(tag, force=True)
