"""A stand-in `huggingface_hub` for the test base image: `snapshot_download` without a hub.

With `local_dir` it writes a tiny checkpoint there (build's --model-source download); without it, into
the hub cache layout under $HF_HOME/hub (render-k8s's fetch-model init container), where vLLM (and the
stand-in vllm) find it with HF_HUB_OFFLINE=1. It also writes a file `token-received` saying whether a
token was passed (its length only, never its value), so a test can prove the BuildKit secret reached
the download step while the token itself stays out of every layer.
"""

import json
import os


def snapshot_download(repo_id, revision="main", local_dir=None, token=None, **_):
    if local_dir is None:
        hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        local_dir = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"), "snapshots", revision or "main")
    os.makedirs(local_dir, exist_ok=True)
    with open(os.path.join(local_dir, "config.json"), "w") as handle:
        json.dump({"_name_or_path": repo_id, "revision": revision, "architectures": ["LlamaForCausalLM"]}, handle)
    with open(os.path.join(local_dir, "token-received"), "w") as handle:
        handle.write(f"length={len(token) if isinstance(token, str) else 0}\n")
    return local_dir
