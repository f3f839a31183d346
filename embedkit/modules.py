"""sentence-transformers modules that embedkit adds; a saved model that uses one needs embedkit to load."""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.module import Module


class FirstLastLayerAverage(Module):
    """Token embeddings = mean of the first transformer layer's and the last layer's outputs.

    The first layer is ``hidden_states[1]`` (``hidden_states[0]`` is the embedding layer, which an early
    version of the SimCSE code averaged by mistake). Followed by mean pooling it gives ``first_last_avg``.
    """

    config_keys: list[str] = []

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        layers = features["all_layer_embeddings"]
        features["token_embeddings"] = (layers[1] + layers[-1]) / 2
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
