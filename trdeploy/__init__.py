"""trdeploy: from a Turkish Llama-3 checkpoint to a vLLM service that meets its SLA."""

__version__ = "0.1.0"
