"""Test support: real engines and servers that tests start and stop (not product code)."""
