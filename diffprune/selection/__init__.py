"""Choosing a deployment configuration under a latency budget: model x scheduler x steps x backend x batch."""
