"""Streaming sliding-window engine: window maths, read/predict/blend/flush, resume."""
