"""A stand-in `huggingface_hub` for the test base image: `snapshot_download` without a hub.

Writes a tiny checkpoint into `local_dir` and a file `token-received` saying whether a token was
passed (its length only, never its value), so a test can prove the BuildKit secret reached the
download step while the token itself stays out of every layer.
"""

import json
import os


def snapshot_download(repo_id, revision="main", local_dir=None, token=None, **_):
    os.makedirs(local_dir, exist_ok=True)
    with open(os.path.join(local_dir, "config.json"), "w") as handle:
        json.dump({"_name_or_path": repo_id, "revision": revision, "architectures": ["LlamaForCausalLM"]}, handle)
    with open(os.path.join(local_dir, "token-received"), "w") as handle:
        handle.write(f"length={len(token) if isinstance(token, str) else 0}\n")
    return local_dir
