"""The review queue's configuration: the `review:` section of an application's args."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.paths import default_data_dir


class CaptureRule(BaseModel):
    """When a prediction of one model goes to the review queue (review/capture.py); any that holds."""

    model_config = ConfigDict(extra="forbid")

    # The top score (or 0: nothing detected) is below this.
    top_score_below: float | None = Field(default=None, gt=0, le=1)
    # Any detection or class scores in [low, high).
    score_band: tuple[float, float] | None = None
    # A random share of all predictions (0: none).
    sample_rate: float = Field(default=0.0, ge=0, le=1)

    @field_validator("score_band")
    @classmethod
    def _band(cls, v):
        if v is not None and not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"score_band must be [low, high) with 0 <= low < high <= 1, got {list(v)}")
        return v


class ReviewConfig(BaseModel):
    """The review queue: predictions worth a person's look, kept with their images."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # off by default: capture stores users' images
    # Images + index.sqlite on the node's own disk (one queue per node); None: the project's .data/review.
    dir: str | None = None
    # Rules by model name; "*": every model without its own.
    rules: dict[str, CaptureRule] = Field(default_factory=dict)
    max_items: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=1 << 30, ge=1)
    # At a bound: drop the oldest items, or pause capture until some are exported or purged.
    when_full: Literal["drop_oldest", "pause"] = "drop_oldest"
    # Captures waiting for the writer thread; beyond: dropped and counted, the request unaffected.
    queue_size: int = Field(default=256, ge=1)

    def rule_for(self, model: str) -> CaptureRule | None:
        return self.rules.get(model) or self.rules.get("*")

    def directory(self) -> str:
        return self.dir or str(default_data_dir() / "review")
