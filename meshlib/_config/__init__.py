"""The config plane: Istio YAML in, an immutable MeshSnapshot out (pydantic at the edge only)."""
