"""Sealing, keys, audit chain, links and PINs, staff authentication and sessions, rate limits."""
