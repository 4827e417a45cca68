"""Integrations with LLM SDKs and agent frameworks, one module each.

Each module is imported only by its ``agent_trace.instrument_*`` function,
so ``import agent_trace`` never imports an SDK or a framework.
"""
