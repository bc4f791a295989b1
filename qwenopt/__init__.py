"""qwenopt: what does it cost to serve Qwen2.5-7B, and which regime is cheapest at my latency target."""

__version__ = "0.1.0"
