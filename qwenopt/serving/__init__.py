"""Online serving: a load generator for OpenAI-compatible endpoints and a vllm serve launcher."""
