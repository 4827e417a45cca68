"""Integrations with LLM SDKs and agent frameworks; each imported only when used.

``agent_trace.instrument_openai()`` and friends import the module for their
SDK or framework on first call, so ``import agent_trace`` never imports one.
"""
