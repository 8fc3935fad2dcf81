"""Latency bench of the IDE endpoints against bare-view floors (`python bench/run.py`)."""
