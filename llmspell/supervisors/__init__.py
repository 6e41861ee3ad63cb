"""Supervision: OTP-style supervisor actors (strategies, restart types,
intensity, backoff, escalation). Imports messages, engines and ``_actor``;
used by the director."""
