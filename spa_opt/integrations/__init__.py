"""Bridges to other graph tools (onnx-graphsurgeon)."""
