"""`CalibrateRequest`: the arguments of `trdeploy calibrate`, the single source of their defaults, ranges and help
(the CLI's options read them); trdeploy.calibrate.job checks what depends on several of them."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from trdeploy.args import Args, arg

DEFAULT_BUDGET_MINUTES = 10.0
DEFAULT_MAX_WAVES = 8  # trdeploy.calibrate.sweep says why

Prior = Literal["shipped", "datasheet"]


class CalibrateRequest(Args):
    command: ClassVar[str] = "calibrate"

    url: str | None = arg(None, help="The vLLM server to measure (its root, with or without /v1), started with the profile's arguments.")
    profile: Path = arg(..., help="The DeploymentProfile the server runs (trdeploy.yaml): model, GPU tier, engine arguments, workload.")
    from_bench: list[Path] = arg(
        [], help="Fit from these `trdeploy bench --json` reports (measured against a server running the profile) instead of measuring."
    )
    check: Path | None = arg(
        None, help="Predict the --from-bench runs with this calibration and report its errors on them (held out: nothing is fitted)."
    )
    budget_minutes: float = arg(
        DEFAULT_BUDGET_MINUTES, gt=0, le=240, help="Minutes the sweep may take (the plan fits inside; at the end a run still going is stopped)."
    )
    max_waves: int = arg(
        DEFAULT_MAX_WAVES, ge=2, le=50, help="At most this many waves (requests per client) per closed-loop point, when the budget holds them: more waves, less noise."
    )
    api_key: str | None = arg(None, help="Bearer token (or OPENAI_API_KEY).")
    model: str | None = arg(None, help="Model name to request.", default_note="the profile's served model name")
    prior: Prior = arg(
        "shipped",
        help="What the fit starts from and the 'before' errors are of: the tier's shipped calibration (else the H100's), or "
        "datasheet (generic efficiencies, as for a card never measured).",
    )
    seed: int = arg(0, ge=0, help="Seed of the arrival times of the rate-driven point (prompts are new every run; see --prompt-salt).")
    prompt_salt: int | None = arg(None, ge=0, help="Salt of the synthetic prompts (bench's --prompt-salt).", default_note="a fresh one")
    timeout_s: float = arg(600.0, gt=0, flag="--timeout", help="Seconds one request may take before it counts as failed.")
    leave_one_out: bool = arg(True, help="Report each point's error from a fit without it (one refit per point).")
    name: str | None = arg(None, help="The calibration's name.", default_note="TIER-MODEL-QUANT")
