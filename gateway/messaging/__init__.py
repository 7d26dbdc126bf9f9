"""Conversations: contacts, threads, messages, the outbox, delivery status, consent, notices."""
