"""Bridges to other tools: onnx-graphsurgeon, Olive (the `olive` extra)."""
