"""Test plug-ins: TF copies that kill their process the first time they train, or always."""

import os
from pathlib import Path

from baselines.tf import TensorFusion
from bench.registry import register_model


@register_model("dies-once")
class DiesOnce(TensorFusion):
    """Exits the whole process (no cleanup) on its first forward; trains normally after."""

    def forward(self, batch):
        flag = Path(os.environ["FMB_DIE_FLAG"])
        if not flag.exists():
            flag.touch()
            os._exit(3)
        return super().forward(batch)


@register_model("always-dies")
class AlwaysDies(TensorFusion):
    """Exits the whole process (no cleanup) on every forward, as a run killed for memory."""

    def forward(self, batch):
        os._exit(9)
